// A real OAuth 2.0 / OpenID Connect authorization server for credproxy's tests
// (oidc-provider 9.x on Node >= 20). Started by tests/fixtures/oidc.py:
//   PORT=0 node server.mjs      -> prints "READY <issuer>" once listening.
//
// One public native client, "credproxy-cli": PKCE (S256) required, loopback
// redirect on any port (RFC 8252 section 7.3), a "copy this code" page at /oob
// for the code-paste flow, device flow (RFC 8628), revocation, refresh tokens
// always issued and rotated.
//
// Environment: PORT (0 = ephemeral), ACCESS_TOKEN_TTL, REFRESH_TOKEN_TTL,
// DEVICE_CODE_TTL (seconds), ROTATE_REFRESH (1/0, default 1), CLOCK_TOLERANCE
// (seconds, default 0 so expiry is prompt).
//
// Test-only routes (not OAuth): GET /test/counters reports how many token
// endpoint requests arrived per grant type (for "cancel stops polling" and
// "refresh once"), the codes, verifiers, device codes and refresh tokens sent
// to them, and how many answers are held; POST /test/hold makes every later
// refresh_token grant issue its token (rotating the refresh token) and then
// hold the answer until POST /test/release, so a test can act while a refresh
// is in flight (a logout, a SIGKILL of the daemon);
// POST /evil/token and /evil/device answer with an error body that echoes the
// request's form fields and headers, the misbehaving provider the error
// reduction must survive.
import http from 'node:http';
import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const PORT = Number(process.env.PORT ?? 0);
const AT_TTL = Number(process.env.ACCESS_TOKEN_TTL ?? 3600);
const RT_TTL = Number(process.env.REFRESH_TOKEN_TTL ?? 14 * 24 * 3600);
const DEVICE_CODE_TTL = Number(process.env.DEVICE_CODE_TTL ?? 600);
const ROTATE = (process.env.ROTATE_REFRESH ?? '1') === '1';
const CLOCK_TOLERANCE = Number(process.env.CLOCK_TOLERANCE ?? 0);
const CLIENT_ID = 'credproxy-cli';

const server = http.createServer();
await new Promise((resolve) => server.listen(PORT, HOST, resolve));
const ISSUER = `http://${HOST}:${server.address().port}`;

const provider = new Provider(ISSUER, {
  clients: [
    {
      client_id: CLIENT_ID,
      client_name: 'credproxy test CLI',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: [
        'authorization_code',
        'refresh_token',
        'urn:ietf:params:oauth:grant-type:device_code',
      ],
      response_types: ['code'],
      redirect_uris: [
        'http://127.0.0.1/callback',
        'http://[::1]/callback',
        `${ISSUER}/oob`,
      ],
    },
  ],
  pkce: { required: () => true },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  claims: { openid: ['sub'], profile: ['name'], email: ['email'] },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => ROTATE,
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, name: `User ${sub}`, email: `${sub}@example.test` }),
  }),
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
  },
  ttl: {
    AccessToken: AT_TTL,
    RefreshToken: RT_TTL,
    AuthorizationCode: 60,
    DeviceCode: DEVICE_CODE_TTL,
    IdToken: 3600,
    Interaction: 3600,
    Session: 86400,
    Grant: RT_TTL,
  },
  clockTolerance: CLOCK_TOLERANCE,
  cookies: { keys: ['test-cookie-key-not-secret'] },
});
provider.proxy = false;

// POST /test/hold-requests makes every later token request wait before the
// provider sees it, until POST /test/release-requests; a request whose client
// went away meanwhile (a daemon SIGKILLed mid-refresh) is then dropped without
// reaching the provider, as if it had never arrived, so its refresh token is
// not consumed. GET /test/held-requests says how many wait.
const holdRequests = { armed: false, held: 0, waiting: [] };

provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === '/test/hold-requests') {
    holdRequests.armed = true;
    ctx.status = 204;
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/test/release-requests') {
    holdRequests.armed = false;
    for (const resume of holdRequests.waiting.splice(0)) resume();
    ctx.status = 204;
    return;
  }
  if (ctx.method === 'GET' && ctx.path === '/test/held-requests') {
    ctx.type = 'json';
    ctx.body = JSON.stringify({ held: holdRequests.held });
    return;
  }
  if (holdRequests.armed && ctx.method === 'POST' && ctx.path === '/token') {
    let gone = false;
    ctx.req.socket.once('close', () => { gone = true; });
    holdRequests.held += 1;
    await new Promise((resume) => holdRequests.waiting.push(resume));
    holdRequests.held -= 1;
    if (gone || ctx.req.socket.destroyed) {
      ctx.status = 499;
      return;
    }
  }
  await next();
});

const tokenRequests = {};
const hold = { armed: false, held: 0, waiting: [] };
// Secrets the host sent to the token endpoints, so tests can prove none of them
// ever reached the sandbox side of the socket.
const seen = { code: [], code_verifier: [], device_code: [], refresh_token: [] };

function remember(params) {
  for (const key of Object.keys(seen)) {
    const value = params?.[key];
    if (typeof value === 'string' && value) seen[key].push(value);
  }
}

function strip(value) {
  return String(value ?? '').replace(/[<>&"']/g, '');
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === '/oob') {
    const code = strip(ctx.query.code);
    const err = strip(ctx.query.error);
    const state = strip(ctx.query.state);
    ctx.type = 'html';
    ctx.body = err
      ? `<html><body><h1>Error</h1><pre id="error">${err}</pre></body></html>`
      : `<html><body><h1>Copy this code</h1><pre id="code">${code}#${state}</pre></body></html>`;
    return;
  }
  if (ctx.method === 'GET' && ctx.path === '/test/counters') {
    ctx.type = 'json';
    ctx.body = JSON.stringify({ token_requests: tokenRequests, seen, held: hold.held });
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/test/hold') {
    hold.armed = true;
    ctx.status = 204;
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/test/release') {
    hold.armed = false;
    for (const resume of hold.waiting.splice(0)) resume();
    ctx.status = 204;
    return;
  }
  if (ctx.method === 'POST' && (ctx.path === '/evil/token' || ctx.path === '/evil/device')) {
    const form = Object.fromEntries(new URLSearchParams(await readBody(ctx.req)));
    remember(form);
    ctx.status = 400;
    ctx.type = 'json';
    ctx.body = JSON.stringify({
      error: ctx.query.error ?? 'invalid_grant',
      error_description: `echo ${JSON.stringify(form)} ${JSON.stringify(ctx.headers)}`,
      error_uri: `${ISSUER}/errors?${new URLSearchParams(form)}`,
      request: form,
    });
    return;
  }
  await next();
  if (ctx.method === 'POST' && ctx.path === '/token') {
    const grant = ctx.oidc?.params?.grant_type ?? 'unknown';
    tokenRequests[grant] = (tokenRequests[grant] ?? 0) + 1;
    remember(ctx.oidc?.params);
    if (hold.armed && grant === 'refresh_token') {
      hold.held += 1;
      await new Promise((resume) => hold.waiting.push(resume));
      hold.held -= 1;
    }
  }
});

provider.on('server_error', (ctx, err) => console.error('server_error', err));
server.on('request', provider.callback());
console.log(`READY ${ISSUER}`);

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
  });
}
