// A malformed percent-encoding in a control API path is the caller's mistake: 400 with a message
// that says so, not a 500 from an uncaught URIError.
import { request } from 'node:http';
import { describe, expect, it } from 'vitest';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon } from './support/daemon.js';

useCleanup();

function get(socketPath: string, path: string): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET' }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('control API paths', () => {
  it('a malformed percent-encoding answers 400 naming the problem, in a route parameter and elsewhere', async () => {
    const d = await startTestDaemon();
    for (const path of ['/v1/domains/%E0%A4%A', '/v1/domains/%E0%A4%A/consumers', '/v1/%ZZ']) {
      const r = await get(d.socket, path);
      expect(r.status, path).toBe(400);
      expect(r.body.message, path).toMatch(/malformed percent-encoding/);
    }
    // A well-formed one still reaches its route.
    expect((await get(d.socket, '/v1/status')).status).toBe(200);
  });
});
