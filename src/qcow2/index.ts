// The qcow2 room: fresh qcow2 images written by virtcbt itself (repository images, fleecing overlays).
export { Qcow2Writer, createQcow2, type Qcow2WriterOptions } from './writer.js';
