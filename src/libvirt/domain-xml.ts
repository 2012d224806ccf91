// Reads what virtcbt needs from libvirt domain XML (disks, agent channel, our QMP socket) and
// adds or removes virtcbt's dedicated QMP monitor in the persistent XML.
import { XMLParser } from 'fast-xml-parser';
import { UsageError } from '../util/errors.js';

export const QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0';
export const AGENT_CHANNEL = 'org.qemu.guest_agent.0';

export interface DomainDisk {
  /** Guest device name, e.g. vda: the stable name admins use. */
  target: string;
  bus?: string;
  /** disk, cdrom, floppy, lun */
  device: string;
  /** qcow2, raw, ... */
  format?: string;
  /** Image file for type='file' (or block device for type='block'). */
  source?: string;
  sourceType: string;
  /** libvirt's `index` of the <source>: the format node is libvirt-N-format (live XML only). */
  sourceIndex?: number;
  /** Device alias in the live XML, e.g. virtio-disk0: query-block's qdev names it. */
  alias?: string;
  readonly: boolean;
  /** Depth of the backing chain libvirt reports (external snapshots make it > 0). */
  backingDepth: number;
}

export interface DomainXmlInfo {
  name: string;
  uuid: string;
  /** kvm or qemu (TCG) */
  type: string;
  disks: DomainDisk[];
  hasAgentChannel: boolean;
  /** Paths of every `-qmp unix:PATH,...` in <qemu:commandline>. */
  qmpSockets: string[];
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  isArray: (name) => ['disk', 'channel', 'qemu:arg', 'arg'].includes(name),
  parseAttributeValue: false,
  parseTagValue: false,
});

type Node = Record<string, unknown>;
const obj = (v: unknown): Node => (v && typeof v === 'object' ? (v as Node) : {});
const arr = (v: unknown): Node[] => (Array.isArray(v) ? (v as Node[]) : v === undefined ? [] : [obj(v)]);
const attr = (n: Node, a: string): string | undefined => {
  const v = n[`@${a}`];
  return v === undefined ? undefined : String(v);
};
const text = (v: unknown): string => (typeof v === 'string' ? v : String(obj(v)['#text'] ?? ''));

function backingDepth(disk: Node): number {
  let depth = 0;
  let b = obj(disk.backingStore);
  while (b['source'] !== undefined) {
    depth++;
    b = obj(b.backingStore);
  }
  return depth;
}

export function parseDomainXml(xml: string): DomainXmlInfo {
  let doc: Node;
  try {
    doc = parser.parse(xml) as Node;
  } catch (cause) {
    throw new UsageError(`domain XML does not parse: ${(cause as Error).message}`, { cause });
  }
  const dom = obj(doc.domain);
  if (!doc.domain) throw new UsageError('not a libvirt domain XML (no <domain> element)');
  const devices = obj(dom.devices);
  const disks: DomainDisk[] = arr(devices.disk).map((d) => {
    const source = obj(d.source);
    const idx = attr(source, 'index');
    return {
      target: attr(obj(d.target), 'dev') ?? '',
      bus: attr(obj(d.target), 'bus'),
      device: attr(d, 'device') ?? 'disk',
      format: attr(obj(d.driver), 'type'),
      source: attr(source, 'file') ?? attr(source, 'dev') ?? attr(source, 'name'),
      sourceType: attr(d, 'type') ?? 'file',
      sourceIndex: idx === undefined ? undefined : Number(idx),
      alias: attr(obj(d.alias), 'name'),
      readonly: d.readonly !== undefined,
      backingDepth: backingDepth(d),
    };
  });
  const hasAgentChannel = arr(devices.channel).some((c) => attr(obj(c.target), 'name') === AGENT_CHANNEL);
  const args = arr(obj(dom['qemu:commandline'])['qemu:arg']).map((a) => attr(a, 'value') ?? '');
  const qmpSockets: string[] = [];
  for (let i = 0; i < args.length - 1; i++) {
    const m = args[i] === '-qmp' ? /^unix:([^,]+)/.exec(args[i + 1]) : null;
    if (m) qmpSockets.push(m[1]);
  }
  return {
    name: text(dom.name),
    uuid: text(dom.uuid),
    type: attr(dom, 'type') ?? '',
    disks,
    hasAgentChannel,
    qmpSockets,
  };
}

/** Disks virtcbt can track: writable file-backed disks (cdroms and read-only disks never change). */
export function trackableDisks(info: DomainXmlInfo): DomainDisk[] {
  return info.disks.filter((d) => d.device === 'disk' && !d.readonly);
}

const escapeAttr = (s: string) => s.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;');

/**
 * Adds `-qmp unix:PATH,server=on,wait=off` to the persistent XML. Text surgery rather than a
 * parse/rebuild round trip, so that libvirt's XML is otherwise passed back byte for byte.
 */
export function addQmpSocket(xml: string, path: string): string {
  const info = parseDomainXml(xml);
  if (info.qmpSockets.includes(path)) return xml;
  let out = xml;
  const root = /<domain\b[^>]*>/.exec(out);
  if (!root) throw new UsageError('not a libvirt domain XML (no <domain> element)');
  if (!/xmlns:qemu=/.test(root[0])) {
    out = out.replace(root[0], root[0].replace(/^<domain\b/, `<domain xmlns:qemu="${QEMU_NS}"`));
  }
  const args = `    <qemu:arg value="-qmp"/>\n    <qemu:arg value="unix:${escapeAttr(path)},server=on,wait=off"/>\n`;
  if (/<qemu:commandline>/.test(out)) {
    out = out.replace(/<qemu:commandline>\s*\n?/, (m) => `${m}${args}`);
  } else {
    out = out.replace(/<\/domain>\s*$/, `  <qemu:commandline>\n${args}  </qemu:commandline>\n</domain>\n`);
  }
  return out;
}

/** Removes virtcbt's `-qmp` pair (and an emptied <qemu:commandline>). */
export function removeQmpSocket(xml: string, path: string): string {
  const esc = escapeAttr(path).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  let out = xml.replace(
    new RegExp(`\\s*<qemu:arg value=['"]-qmp['"]\\s*/>\\s*<qemu:arg value=['"]unix:${esc},[^'"]*['"]\\s*/>`),
    '',
  );
  out = out.replace(/\s*<qemu:commandline>\s*<\/qemu:commandline>/, '');
  return out;
}
