// Types of the peerpouch PouchDB plugin. The code is plain ES modules (index.js, src/).

/** An ICE server as `RTCPeerConnection` takes it. */
export interface IceServer {
  urls: string | string[];
  username?: string;
  credential?: string;
}

/** What `onRemote` receives for each peer that asks to connect, before any answer. */
export interface RemoteEvent {
  /** The peer's id on the hub (`peer-…`). */
  peer: string;
  /** What the peer sent with its offer (`info` of its `new PouchDB(dbname, {info})`). */
  info: unknown;
  /** Refuses the peer: it gets a refusal signal and nothing else. */
  preventDefault(): void;
  readonly defaultPrevented: boolean;
}

export interface ShareOptions {
  /** Shown to others in `getSharedDatabases` (default: the database's name). */
  name?: string;
  /** Any JSON, shown to others (put nothing secret here: the hub sees it). */
  info?: unknown;
  /** Refuse peers' writes (`_local` documents, the replicator's checkpoints, still go). */
  readOnly?: boolean;
  /** A secret peers must hold (a string or bytes); proven over the link, never sent. */
  key?: string | Uint8Array;
  iceServers?: IceServer[];
  iceTransportPolicy?: 'all' | 'relay';
  /** Called for each peer before it is answered; `evt.preventDefault()` refuses it. */
  onRemote?(evt: RemoteEvent): void;
  log?(...args: unknown[]): void;
}

/** A database shared by this page. */
export interface ShareHandle {
  /** The share document's id (`share-…`). */
  id: string;
  name: string;
  /** What others open: `peer+HUB#SHARE`. */
  dbname: string;
  unshare(): Promise<void>;
}

/** A share on the hub, as `getSharedDatabases` lists it. */
export interface SharedDatabase {
  id: string;
  name: string | null;
  info: unknown;
  /** Open it with `new PouchDB(dbname, {key, iceServers, info})`. */
  dbname: string;
  readOnly?: boolean;
  /** The sharer's DTLS certificate fingerprint, when it published one. */
  fingerprint?: string;
  expires_at?: number;
  /** Set on removals reported to `onChange`. */
  _deleted?: true;
}

export interface SharedDatabasesOptions {
  /** Shares added (and `{id, _deleted: true}` for removed ones) as the hub changes. */
  onChange?(share: SharedDatabase): void;
}

/** Options of `new PouchDB('peer+HUB#SHARE', options)` (the `peerpouch` adapter). */
export interface PeerDatabaseOptions {
  key?: string | Uint8Array;
  iceServers?: IceServer[];
  iceTransportPolicy?: 'all' | 'relay';
  /** Sent to the sharer with the offer; its `onRemote` sees it. */
  info?: unknown;
  log?(...args: unknown[]): void;
}

type Callback<T> = (err: Error | null, result?: T) => void;

declare global {
  namespace PouchDB {
    interface Database<Content extends {} = {}> {
      shareDatabase(db: Database, opts?: ShareOptions): Promise<ShareHandle>;
      shareDatabase(db: Database, opts: ShareOptions, callback: Callback<ShareHandle>): void;
      unshareDatabase(db: Database): Promise<{ ok: true }>;
      unshareDatabase(db: Database, callback: Callback<{ ok: true }>): void;
      getSharedDatabases(opts?: SharedDatabasesOptions): Promise<SharedDatabase[] & { cancel?(): void }>;
      getSharedDatabases(opts: SharedDatabasesOptions, callback: Callback<SharedDatabase[]>): void;
    }
  }
}

/** A PouchDB-shaped error: `status`, `name` (CouchDB's error word), `message`, `error: true`. */
export class PouchError extends Error {
  constructor(status: number, name: string, reason: string);
  status: number;
  error: true;
  reason: string;
}

/** Splits `peer+HUB#SHARE` into the hub's name and the share (an id or a name). */
export function parseDbName(name: string): { hub: string; share: string };

/** The plugin: `PouchDB.plugin(PeerPouch)`. */
declare function PeerPouch(PouchDB: unknown): void;
export default PeerPouch;
export { PeerPouch };
