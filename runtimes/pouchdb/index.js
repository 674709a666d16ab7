// peerpouch for PouchDB: share a PouchDB database peer to peer over WebRTC, and open a share
// as a PouchDB database. See README.md.
import PeerPouch from './src/plugin.js';

export default PeerPouch;
export { PeerPouch };
export { parseDbName, PouchHub, ServedPouch } from './src/plugin.js';
export { PouchError } from './src/mapping.js';
export { Client, Hub, HubError, ProtocolError, RpcError, share } from './src/protocol.js';
