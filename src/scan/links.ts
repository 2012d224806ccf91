// A domain's network links as libvirt sees them, live and in the persistent definition, and
// setting one: what quarantine's link-down takes away and release gives back.
import { XMLParser } from 'fast-xml-parser';
import { virsh, type Libvirt } from '../libvirt/index.js';

export type LinkState = 'up' | 'down';

/** One interface, named by its MAC address (stable across restarts, unlike the tap's name). */
export interface InterfaceLinks {
  mac: string;
  /** State in the running domain; absent when the domain is not running or the interface is not in it. */
  live?: LinkState;
  /** State in the persistent definition; absent for a transient domain or an interface only hot-plugged. */
  config?: LinkState;
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  isArray: (name) => name === 'interface',
  parseAttributeValue: false,
  parseTagValue: false,
});

type Node = Record<string, unknown>;
const obj = (v: unknown): Node => (v && typeof v === 'object' ? (v as Node) : {});

/** MAC → link state of every `<interface>` in a domain XML (no `<link>` element means up). */
export function interfaceLinks(xml: string): Map<string, LinkState> {
  const devices = obj(obj(obj(parser.parse(xml)).domain).devices);
  const out = new Map<string, LinkState>();
  for (const i of (Array.isArray(devices.interface) ? devices.interface : []) as unknown[]) {
    const mac = obj(obj(i).mac)['@address'];
    if (typeof mac !== 'string') continue;
    out.set(mac.toLowerCase(), obj(obj(i).link)['@state'] === 'down' ? 'down' : 'up');
  }
  return out;
}

export interface DomainLinks {
  running: boolean;
  persistent: boolean;
  interfaces: InterfaceLinks[];
}

/** Every interface of the domain with its live and persistent link state. */
export async function readLinks(libvirt: Libvirt, domain: string): Promise<DomainLinks> {
  const running = await libvirt.isActive(domain);
  const persistent = await libvirt.isPersistent(domain);
  const live = running ? interfaceLinks(await libvirt.xml(domain)) : new Map<string, LinkState>();
  const config = persistent ? interfaceLinks(await libvirt.xml(domain, { inactive: true })) : new Map<string, LinkState>();
  const macs = [...new Set([...live.keys(), ...config.keys()])];
  return { running, persistent, interfaces: macs.map((mac) => ({ mac, live: live.get(mac), config: config.get(mac) })) };
}

/**
 * Sets one interface's link in the running domain (`live`) or the persistent definition
 * (`config`). Two separate calls, because virsh domif-setlink changes one or the other.
 */
export async function setLink(libvirt: Libvirt, domain: string, mac: string, state: LinkState, where: 'live' | 'config'): Promise<void> {
  await virsh(['domif-setlink', domain, mac, state, ...(where === 'config' ? ['--config'] : [])], { uri: libvirt.uri, domain });
}
