// The qcow2 room: fresh qcow2 images written by virtcbt itself (repository images, fleecing overlays), and the header of an existing one.
export { Qcow2Writer, createQcow2, type Qcow2WriterOptions } from './writer.js';
export { KNOWN_INCOMPATIBLE, Qcow2HeaderError, decodeQcow2Header, readQcow2Header, type Qcow2Header } from './header.js';
