// libvirt room: domain XML, virsh, domain look-ups.
export * from './domain-xml.js';
export * from './virsh.js';
export * from './domains.js';
export * from './monitor.js';
