// Attachment bytes between PouchDB's forms (Blob in browsers, Buffer in Node.js, base64 strings)
// and the bytes the link carries.

const CHUNK = 0x8000;

/** Bytes as base64, in chunks (a 16 MiB attachment must not build one huge argument list). */
export function bytesToBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += CHUNK) s += String.fromCharCode.apply(null, bytes.subarray(i, i + CHUNK));
  return btoa(s);
}

/** base64 as bytes. */
export function base64ToBytes(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

const isNode = typeof process !== 'undefined' && !!process.versions?.node && typeof window === 'undefined';

/** Bytes as PouchDB hands binary attachments out: a Blob in a browser, a Buffer in Node.js. */
export function toBinary(bytes, type) {
  if (isNode && typeof Buffer !== 'undefined') return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  return new Blob([bytes], { type: type ?? '' });
}

/** Any of PouchDB's attachment data forms as bytes (a base64 string is decoded). */
export async function toBytes(data) {
  if (typeof data === 'string') return base64ToBytes(data);
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (typeof Blob !== 'undefined' && data instanceof Blob) return new Uint8Array(await data.arrayBuffer());
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError('attachment data must be base64, a Blob, an ArrayBuffer or bytes');
}

/** Replaces binary attachment data in a document by base64, as JSON carries it. */
export async function attachmentsToBase64(doc) {
  const atts = doc?._attachments;
  if (!atts) return doc;
  for (const att of Object.values(atts)) {
    if (att && att.data !== undefined && typeof att.data !== 'string') att.data = bytesToBase64(await toBytes(att.data));
  }
  return doc;
}

/** Replaces base64 attachment data in a document by PouchDB's binary form. */
export function attachmentsToBinary(doc) {
  const atts = doc?._attachments;
  if (!atts) return doc;
  for (const att of Object.values(atts)) {
    if (att && typeof att.data === 'string') att.data = toBinary(base64ToBytes(att.data), att.content_type);
  }
  return doc;
}
