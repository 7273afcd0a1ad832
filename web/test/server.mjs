// A static file server for the page tests: web/dist at /, checkpoints at /models/<name>/, HTTP
// range requests as Hugging Face serves them (206 with Content-Range), and a log of what was
// asked so tests can tell network reads from cache reads. Folders named `norange-*` ignore
// Range headers, as a server without range support would.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json',
};

export function serve({ dist, models }) {
  const log = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    let file;
    if (url.pathname.startsWith('/models/')) {
      file = path.join(models, decodeURIComponent(url.pathname.slice('/models/'.length)));
    } else {
      file = path.join(dist, url.pathname === '/' ? 'index.html' : decodeURIComponent(url.pathname));
    }
    const range = req.headers.range;
    log.push({ path: url.pathname, range: range ?? null });
    if (!file.startsWith(models) && !file.startsWith(dist)) return end(res, 403);
    let stat;
    try {
      stat = fs.statSync(file);
    } catch {
      return end(res, 404);
    }
    if (!stat.isFile()) return end(res, 404);
    const headers = {
      'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      'Accept-Ranges': 'bytes',
      'Cache-Control': 'no-store',
    };
    const m = /^bytes=(\d+)-(\d*)$/.exec(range ?? '');
    if (m && !url.pathname.includes('/norange-')) {
      const start = Number(m[1]);
      const last = m[2] === '' ? stat.size - 1 : Math.min(Number(m[2]), stat.size - 1);
      if (start >= stat.size || last < start) {
        res.writeHead(416, { 'Content-Range': `bytes */${stat.size}` });
        return res.end();
      }
      res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${last}/${stat.size}`,
        'Content-Length': last - start + 1 });
      if (req.method === 'HEAD') return res.end();
      return fs.createReadStream(file, { start, end: last }).pipe(res);
    }
    res.writeHead(200, { ...headers, 'Content-Length': stat.size });
    if (req.method === 'HEAD') return res.end();
    fs.createReadStream(file).pipe(res);
  });
  return new Promise(resolve => {
    server.listen(0, '127.0.0.1', () => resolve({
      url: `http://127.0.0.1:${server.address().port}`,
      log,
      close: () => new Promise(r => server.close(r)),
    }));
  });
}

function end(res, status) {
  res.writeHead(status, { 'Content-Type': 'text/plain' });
  res.end(http.STATUS_CODES[status]);
}
