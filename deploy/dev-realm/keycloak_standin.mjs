// Test-only OpenID Connect provider that looks like Keycloak from the outside.
//
// oidc-provider (OpenID Certified) is mounted once per realm at Keycloak's URL layout:
//   /realms/<realm>                                         realm info with `public_key`
//   /realms/<realm>/.well-known/openid-configuration        discovery
//   /realms/<realm>/protocol/openid-connect/{token,certs,userinfo,token/introspect,auth/device}
// Access tokens are JWTs shaped like Keycloak's: `realm_access.roles`, `resource_access`, `azp`,
// `preferred_username`, `typ: "Bearer"`, `aud: "account"` (+ clients the user has roles in).
// oidc-provider has no password grant and cannot look up its own JWT access tokens (so no userinfo
// or introspection for them); the few routes below add those on top of the provider's models and keys.
//
// Browser sign-in (authorization code + PKCE, S256 required) for the client `sovereign`, as the web
// console uses it: a login form at /realms/<realm>/interaction/<uid> (password `<user>-password`),
// consent granted automatically (a first-party client), redirect URIs https://127.0.0.1:<any port>/auth/callback
// and https://localhost:<any port>/auth/callback (the console's callback on loopback).
//
// Test-only routes (never part of Keycloak): /test/realms/<realm>/mint (a token with chosen claims
// signed by the realm key), /test/realms/<realm>/device/approve (complete a device login),
// /test/stats (request counts per path).
//
// Usage: node keycloak_standin.mjs  -> listens on 127.0.0.1 on a free port and prints one line
// {"ready": true, "port": N} to stdout.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const ACCESS_TOKEN_TTL = 300;
const RESOURCE = 'urn:sovereign:keycloak-standin';

const USERS = {
  alice: { realm: ['sovereign-admin', 'sovereign-key-custodian'], clients: {} },
  bob: { realm: ['sovereign-admin', 'sovereign-key-custodian'], clients: {} },
  carol: { realm: ['sovereign-auditor'], clients: {} },
  dave: { realm: ['sovereign-operator'], clients: {} },
  erin: { realm: [], clients: {} },
  // Client roles only (Keycloak puts them under resource_access.<client>.roles).
  frank: { realm: [], clients: { sovereign: ['sovereign-key-custodian'] } },
};
const REALMS = ['sovereign', 'other'];
const CLIENTS = ['sovereign', 'other-app'];

const stats = {};

function subjectOf(realm, username) {
  // Keycloak subjects are per-realm UUIDs; derive stable ones.
  const h = crypto.createHash('sha256').update(`${realm}/${username}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

function accountBySub(realm, sub) {
  for (const [username, user] of Object.entries(USERS)) {
    if (subjectOf(realm, username) === sub) return { username, ...user };
  }
  return undefined;
}

function keycloakAudience(username) {
  // Keycloak's aud: "account" plus every client the user holds roles in.
  const withRoles = Object.keys(USERS[username].clients);
  return withRoles.length ? ['account', ...withRoles] : 'account';
}

function keycloakClaims(realm, username, azp) {
  const user = USERS[username];
  const resourceAccess = {};
  for (const [client, roles] of Object.entries(user.clients)) resourceAccess[client] = { roles };
  return {
    typ: 'Bearer',
    azp,
    preferred_username: username,
    realm_access: { roles: [...user.realm, `default-roles-${realm}`, 'offline_access'] },
    resource_access: resourceAccess,
  };
}

function makeKeys(realm) {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const enc = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = (pair, kid, alg, use) => ({ ...pair.privateKey.export({ format: 'jwk' }), kid, alg, use });
  return {
    rsa,
    ec,
    jwks: [
      jwk(rsa, `${realm}-rs256`, 'RS256', 'sig'),
      jwk(ec, `${realm}-es256`, 'ES256', 'sig'),
      // Keycloak publishes an encryption key in the same set; relying parties must skip it.
      jwk(enc, `${realm}-rsa-oaep`, 'RSA-OAEP', 'enc'),
    ],
  };
}

function makeProvider(realm, issuer, keys) {
  const provider = new Provider(issuer, {
    clients: CLIENTS.map((clientId) => ({
      client_id: clientId,
      token_endpoint_auth_method: 'none',
      grant_types: ['password', 'urn:ietf:params:oauth:grant-type:device_code', 'refresh_token', 'authorization_code'],
      response_types: ['code'],
      redirect_uris: ['https://127.0.0.1/auth/callback'],
    })),
    interactions: { url: async (_ctx, interaction) => `/realms/${realm}/interaction/${interaction.uid}` },
    loadExistingGrant: async (ctx) => {
      // First-party client: consent is implied, as Keycloak does with consent off.
      const existing = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (existing) return ctx.oidc.provider.Grant.find(existing);
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope('openid profile');
      grant.addResourceScope(RESOURCE, 'openid profile');
      await grant.save();
      return grant;
    },
    jwks: { keys: keys.jwks },
    findAccount: async (_ctx, sub) => {
      const user = accountBySub(realm, sub);
      if (!user) return undefined;
      return { accountId: sub, claims: async () => ({ sub, preferred_username: user.username }) };
    },
    claims: { openid: ['sub'], profile: ['preferred_username'] },
    scopes: ['openid', 'profile', 'offline_access'],
    // As Keycloak does: a refresh token with every grant the client may refresh (not only offline_access).
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: { AccessToken: ACCESS_TOKEN_TTL, DeviceCode: 600, Grant: 3600, IdToken: 300, RefreshToken: 1800 },
    features: {
      devInteractions: { enabled: false },
      encryption: { enabled: true },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async () => ({
          scope: 'openid profile',
          audience: 'account',
          accessTokenTTL: ACCESS_TOKEN_TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    extraTokenClaims: async (_ctx, token) => {
      const user = token.accountId && accountBySub(realm, token.accountId);
      if (!user) return undefined;
      return keycloakClaims(realm, user.username, token.clientId);
    },
    formats: {
      customizers: {
        jwt: async (_ctx, token, jwt) => {
          const user = token.accountId && accountBySub(realm, token.accountId);
          if (user) jwt.payload.aud = keycloakAudience(user.username);
          jwt.header = { typ: 'JWT' };
        },
      },
    },
    routes: {
      authorization: '/protocol/openid-connect/auth',
      token: '/protocol/openid-connect/token',
      jwks: '/protocol/openid-connect/certs',
      userinfo: '/protocol/openid-connect/userinfo-oidc-provider',
      revocation: '/protocol/openid-connect/revoke',
      end_session: '/protocol/openid-connect/logout',
      device_authorization: '/protocol/openid-connect/auth/device',
      code_verification: '/device',
    },
  });

  // Resource Owner Password Credentials, which Keycloak supports and oidc-provider does not.
  provider.registerGrantType(
    'password',
    async (ctx) => {
      const { username, password } = ctx.oidc.params;
      if (!username || !USERS[username] || password !== `${username}-password`) {
        ctx.status = 401;
        ctx.body = { error: 'invalid_grant', error_description: 'Invalid user credentials' };
        return;
      }
      const at = new provider.AccessToken({
        accountId: subjectOf(realm, username),
        client: ctx.oidc.client,
        gty: 'password',
        scope: 'openid profile',
      });
      at.resourceServer = new provider.ResourceServer(RESOURCE, {
        scope: 'openid profile',
        audience: 'account',
        accessTokenTTL: ACCESS_TOKEN_TTL,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      });
      // Keycloak answers the password grant with a refresh token of the user's session too.
      const grant = new provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: subjectOf(realm, username) });
      grant.addOIDCScope('openid profile');
      grant.addResourceScope(RESOURCE, 'openid profile');
      const grantId = await grant.save();
      at.grantId = grantId;
      const rt = new provider.RefreshToken({
        accountId: subjectOf(realm, username),
        client: ctx.oidc.client,
        grantId,
        gty: 'password',
        scope: 'openid profile',
        resource: RESOURCE,
      });
      const refresh = await rt.save();
      const value = await at.save();
      ctx.body = {
        access_token: value,
        expires_in: at.expiration,
        refresh_token: refresh,
        refresh_expires_in: rt.expiration,
        token_type: 'Bearer',
        'not-before-policy': 0,
        scope: 'openid profile',
      };
    },
    ['username', 'password', 'scope'],
  );
  // Keycloak's token responses carry refresh_expires_in whatever the grant (device code, refresh,
  // authorization code); oidc-provider leaves it out: add it from the refresh token itself.
  provider.use(async (ctx, next) => {
    await next();
    const body = ctx.body;
    if (ctx.method !== 'POST' || !ctx.path.endsWith('/token') || !body || typeof body !== 'object') return;
    if (!body.refresh_token || body.refresh_expires_in !== undefined) return;
    const rt = await provider.RefreshToken.find(body.refresh_token);
    if (rt && rt.exp) body.refresh_expires_in = Math.max(0, rt.exp - Math.floor(Date.now() / 1000));
  });
  const allowed = provider.Client.prototype.redirectUriAllowed;
  provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
    return allowed.call(this, value) || (this.clientId === 'sovereign' && consoleCallback(value));
  };
  return provider;
}

function consoleCallback(value) {
  try {
    const url = new URL(value);
    return url.protocol === 'https:' && ['127.0.0.1', 'localhost'].includes(url.hostname)
      && url.pathname === '/auth/callback' && !url.search && !url.hash && !url.username;
  } catch {
    return false;
  }
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

async function interaction(realm, provider, uid, req, res) {
  // The login form of the browser flow (Keycloak's own page in production).
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, { error: 'invalid_request' });
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    return res.end(`<!doctype html><html><head><title>Sign in to ${escapeHtml(realm)}</title></head><body>
<h1>Sign in to ${escapeHtml(realm)}</h1>
<form method="post" action="/realms/${escapeHtml(realm)}/interaction/${escapeHtml(uid)}">
<label>Username <input id="username" name="username" autocomplete="username"></label>
<label>Password <input id="password" name="password" type="password" autocomplete="current-password"></label>
<button id="kc-login" type="submit">Sign In</button></form></body></html>`);
  }
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
  const username = form.get('username') ?? '';
  if (!USERS[username] || form.get('password') !== `${username}-password`) {
    res.writeHead(401, { 'content-type': 'text/html; charset=utf-8' });
    return res.end('<!doctype html><p id="error">Invalid username or password.</p>');
  }
  return provider.interactionFinished(req, res, { login: { accountId: subjectOf(realm, username) } }, {
    mergeWithLastSubmission: false,
  });
}

function b64url(data) {
  return Buffer.from(data).toString('base64url');
}

function mint(realm, issuer, keys, body) {
  const now = Math.floor(Date.now() / 1000);
  const username = body.username ?? 'alice';
  const alg = body.alg ?? 'RS256';
  const claims = {
    exp: now + ACCESS_TOKEN_TTL,
    iat: now,
    jti: crypto.randomUUID(),
    iss: issuer,
    sub: subjectOf(realm, username),
    scope: 'openid profile',
    aud: keycloakAudience(username),
    ...keycloakClaims(realm, username, body.azp ?? 'sovereign'),
  };
  for (const [name, value] of Object.entries(body.claims ?? {})) {
    if (value === null) delete claims[name];
    else claims[name] = value;
  }
  const header = { alg, typ: 'JWT', kid: alg === 'ES256' ? `${realm}-es256` : `${realm}-rs256`, ...body.header };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = alg === 'ES256'
    ? crypto.sign('sha256', Buffer.from(input), { key: keys.ec.privateKey, dsaEncoding: 'ieee-p1363' })
    : crypto.sign('sha256', Buffer.from(input), keys.rsa.privateKey);
  return `${input}.${b64url(signature)}`;
}

async function approveDevice(realm, provider, body) {
  // Stored without the mask's separators, as the provider's own verification page normalises input.
  const userCode = String(body.user_code ?? '').replace(/[^A-Za-z]/g, '').toUpperCase();
  const code = await provider.DeviceCode.findByUserCode(userCode);
  if (!code || !USERS[body.username]) return false;
  const accountId = subjectOf(realm, body.username);
  const grant = new provider.Grant({ accountId, clientId: code.clientId });
  grant.addOIDCScope('openid profile');
  grant.addResourceScope(RESOURCE, 'openid profile');
  code.grantId = await grant.save();
  code.accountId = accountId;
  code.resource = RESOURCE;
  code.scope = 'openid profile';
  code.authTime = Math.floor(Date.now() / 1000);
  await code.save();
  return true;
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : {};
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function verifiedClaims(keys, value) {
  // oidc-provider cannot look up JWT access tokens, so userinfo and introspection verify them here.
  const [h, p, sig] = String(value ?? '').split('.');
  if (!sig) return undefined;
  try {
    const header = JSON.parse(Buffer.from(h, 'base64url').toString('utf8'));
    const data = Buffer.from(`${h}.${p}`);
    const signature = Buffer.from(sig, 'base64url');
    const ok = header.alg === 'ES256'
      ? crypto.verify('sha256', data, { key: keys.ec.publicKey, dsaEncoding: 'ieee-p1363' }, signature)
      : header.alg === 'RS256' && crypto.verify('sha256', data, keys.rsa.publicKey, signature);
    const claims = ok && JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
    return claims && claims.exp > Date.now() / 1000 ? claims : undefined;
  } catch {
    return undefined;
  }
}

async function userinfo(realm, keys, req, res) {
  const auth = req.headers.authorization ?? '';
  const claims = auth.startsWith('Bearer ') ? verifiedClaims(keys, auth.slice(7)) : undefined;
  const user = claims && accountBySub(realm, claims.sub);
  if (!user) {
    send(res, 401, { error: 'invalid_token', error_description: 'Token verification failed' });
    return;
  }
  send(res, 200, { sub: claims.sub, preferred_username: user.username, email_verified: false });
}

async function introspect(keys, req, res) {
  // Keycloak's shape: {"active": true, ...every claim} or {"active": false}.
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
  if (!form.get('client_id')) return send(res, 401, { error: 'invalid_client' });
  const claims = verifiedClaims(keys, form.get('token'));
  return send(res, 200, claims ? { ...claims, active: true, client_id: claims.azp } : { active: false });
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const realms = {};
  for (const realm of REALMS) {
    const issuer = `http://127.0.0.1:${port}/realms/${realm}`;
    const keys = makeKeys(realm);
    const provider = makeProvider(realm, issuer, keys);
    const spki = keys.rsa.publicKey.export({ format: 'der', type: 'spki' }).toString('base64');
    realms[realm] = { issuer, keys, provider, callback: provider.callback(), spki };
  }

  server.on('request', async (req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    stats[path] = (stats[path] ?? 0) + 1;
    try {
      if (path === '/test/stats') return send(res, 200, stats);
      const test = path.match(/^\/test\/realms\/([^/]+)\/(mint|device\/approve)$/);
      if (test && realms[test[1]] && req.method === 'POST') {
        const realm = realms[test[1]];
        const body = await readJson(req);
        if (test[2] === 'mint') return send(res, 200, { token: mint(test[1], realm.issuer, realm.keys, body) });
        return send(res, (await approveDevice(test[1], realm.provider, body)) ? 200 : 404, {});
      }
      const m = path.match(/^\/realms\/([^/]+)(\/.*)?$/);
      const realm = m && realms[m[1]];
      if (!realm) return send(res, 404, { error: 'Realm does not exist' });
      const rest = m[2] ?? '';
      if (rest === '' || rest === '/') {
        return send(res, 200, {
          realm: m[1],
          public_key: realm.spki,
          'token-service': `${realm.issuer}/protocol/openid-connect`,
          'account-service': `${realm.issuer}/account`,
          'tokens-not-before': 0,
        });
      }
      if (rest === '/protocol/openid-connect/userinfo') return await userinfo(m[1], realm.keys, req, res);
      const step = rest.match(/^\/interaction\/([A-Za-z0-9_-]+)$/);
      if (step && (req.method === 'GET' || req.method === 'POST')) {
        return await interaction(m[1], realm.provider, step[1], req, res);
      }
      if (rest === '/protocol/openid-connect/token/introspect' && req.method === 'POST') {
        return await introspect(realm.keys, req, res);
      }
      // Mount the provider like express does: strip the prefix, keep originalUrl.
      req.originalUrl = req.url;
      req.url = req.url.slice(`/realms/${m[1]}`.length);
      return realm.callback(req, res);
    } catch (err) {
      console.error(err);
      return send(res, 500, { error: 'server_error' });
    }
  });
  process.stdout.write(`${JSON.stringify({ ready: true, port })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
