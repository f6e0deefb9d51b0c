// OpenID Connect against Valet with panva's openid-client (OpenID Certified), the pages
// clicked in Debian's chromium by playwright-core: discovery → code with PKCE, nonce and
// state → id_token → UserInfo → refresh → RP-Initiated Logout.
//
// Environment: ISSUER, CLIENT_ID, CLIENT_SECRET (a confidential client with redirect URI
// REDIRECT_URI, post-logout redirect URI SIGNED_OUT and scopes openid profile),
// USERNAME, PASSWORD, CHROMIUM (default /usr/bin/chromium). Prints one JSON line of
// what it saw; exits non-zero on any failure.
import * as client from 'openid-client';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const issuer = env('ISSUER');
const redirectUri = env('REDIRECT_URI', 'https://app.example/cb');
const signedOut = env('SIGNED_OUT');

// Valet runs on loopback http in tests.
const config = await client.discovery(new URL(issuer), env('CLIENT_ID'), env('CLIENT_SECRET'), undefined, {
  execute: [client.allowInsecureRequests],
});

const browser = await chromium.launch({ executablePath: env('CHROMIUM', '/usr/bin/chromium'), args: ['--no-sandbox'] });
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  // The app's own addresses are not served here: catch the browser arriving there.
  let arrived;
  await page.route(`${new URL(redirectUri).origin}/**`, (route) => {
    arrived = route.request().url();
    return route.fulfill({ status: 200, contentType: 'text/plain', body: 'back at the app' });
  });

  const codeVerifier = client.randomPKCECodeVerifier();
  const nonce = client.randomNonce();
  const state = client.randomState();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope: 'openid profile',
    code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    nonce,
    state,
  });
  await page.goto(url.href);
  await page.fill('input[name=username]', env('USERNAME'));
  await page.fill('input[name=password]', env('PASSWORD'));
  await Promise.all([page.waitForNavigation(), page.press('input[name=password]', 'Enter')]);
  await page.click('button[value=approve]');
  await page.waitForURL(`${redirectUri}**`);

  // Checks state, iss (RFC 9207), the code exchange with PKCE, the id_token and nonce.
  const tokens = await client.authorizationCodeGrant(config, new URL(arrived), {
    pkceCodeVerifier: codeVerifier,
    expectedNonce: nonce,
    expectedState: state,
    idTokenExpected: true,
  });
  const claims = tokens.claims();
  const info = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  const again = refreshed.claims();
  if (!again || again.sub !== claims.sub) throw new Error('the refreshed id_token names another user');

  const end = client.buildEndSessionUrl(config, {
    id_token_hint: tokens.id_token,
    post_logout_redirect_uri: signedOut,
    state: 'bye',
  });
  // SIGNED_OUT is a page that exists: page.route does not catch a goto's redirect.
  await page.goto(end.href);
  if (!page.url().startsWith(signedOut)) {
    throw new Error(`logout ended at ${page.url()}: ${await page.innerText('body')}`);
  }
  const back = new URL(page.url());
  console.log(
    JSON.stringify({
      sub: claims.sub,
      iss: claims.iss,
      name: info.name,
      refreshed_sub: again.sub,
      auth_time_kept: again.auth_time === claims.auth_time,
      logout_state: back.searchParams.get('state'),
    }),
  );
} finally {
  await browser.close();
}
