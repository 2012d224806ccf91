// Shapes of qemu-guest-agent 7.2 replies (qga/qapi-schema.json) that virtcbt reads.

/** guest-info */
export interface GuestAgentInfo {
  version: string;
  supported_commands: { name: string; enabled: boolean; 'success-response': boolean }[];
}

/** guest-exec-status. `exitcode` is absent when the program died of a signal. */
export interface GuestExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
  'out-truncated'?: boolean;
  'err-truncated'?: boolean;
}

export interface GuestPCIAddress {
  domain: number;
  bus: number;
  slot: number;
  function: number;
}

/** GuestDiskAddress: where a filesystem's disk sits on the guest's buses; `serial` matches libvirt's <serial>. */
export interface GuestDiskAddress {
  'pci-controller': GuestPCIAddress;
  'bus-type': string;
  bus: number;
  target: number;
  unit: number;
  serial?: string;
  /** The guest's device node, e.g. /dev/vda. */
  dev?: string;
  'ccw-address'?: { cssid: number; ssid: number; subchno: number; devno: number };
}

/** guest-get-fsinfo, one mounted filesystem. */
export interface GuestFilesystemInfo {
  /** Kernel name of the device, e.g. "vda1" or "dm-0". */
  name: string;
  mountpoint: string;
  type: string;
  'used-bytes'?: number;
  'total-bytes'?: number;
  disk: GuestDiskAddress[];
}

/** guest-get-disks, one block device or partition. */
export interface GuestDiskInfo {
  name: string;
  partition: boolean;
  dependencies?: string[];
  address?: GuestDiskAddress;
  alias?: string;
}
