// Alice in Debian's chromium (playwright-core): she signs in to Printshop through Valet,
// opens her account page at Valet, and removes Printshop's access. Then Printshop, told
// by a back-channel logout token, has signed her out.
//
// Environment: PRINTSHOP (Printshop's base URL), VALET (the issuer), USERNAME, PASSWORD,
// SHOTS (a directory for screenshots), CHROMIUM (default /usr/bin/chromium). Prints one
// JSON line of what it saw; exits non-zero on any failure.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const printshop = env('PRINTSHOP');
const valet = env('VALET');
const shots = env('SHOTS');
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({ executablePath: env('CHROMIUM', '/usr/bin/chromium'), args: ['--no-sandbox'] });
try {
  const context = await browser.newContext({ viewport: { width: 1024, height: 800 } });
  const page = await context.newPage();

  // Sign in to Printshop through Valet (consent only if Valet asks).
  await page.goto(`${printshop}/login`);
  await page.fill('input[name=username]', env('USERNAME'));
  await page.fill('input[name=password]', env('PASSWORD'));
  await Promise.all([page.waitForNavigation(), page.press('input[name=password]', 'Enter')]);
  if (await page.locator('button[value=approve]').count()) {
    await Promise.all([page.waitForNavigation(), page.click('button[value=approve]')]);
  }
  await page.waitForURL(`${printshop}/**`);
  const signedIn = (await page.innerText('body')).includes('Signed in as');
  await page.screenshot({ path: `${shots}/account-1-printshop-signed-in.png`, fullPage: true });

  // The account page at Valet, in the same browser: already signed in there.
  await page.goto(`${valet}/account`);
  const before = await page.innerText('main');
  await page.screenshot({ path: `${shots}/account-2-apps-and-sessions.png`, fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${shots}/account-3-phone.png`, fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);

  await Promise.all([
    page.waitForNavigation(),
    page.click('button[aria-label="Remove access of Printshop"]'),
  ]);
  const after = await page.innerText('main');
  await page.screenshot({ path: `${shots}/account-4-access-removed.png`, fullPage: true });

  // Printshop hears it over the back channel: her session there ends.
  let printshopSignedOut = false;
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    await page.goto(`${printshop}/`);
    if ((await page.innerText('body')).includes('Sign in with Valet')) {
      printshopSignedOut = true;
      break;
    }
    await page.waitForTimeout(100);
  }
  await page.screenshot({ path: `${shots}/account-5-printshop-signed-out.png`, fullPage: true });

  console.log(
    JSON.stringify({
      signed_in: signedIn,
      listed_printshop: before.includes('Printshop'),
      listed_session: before.includes('this browser'),
      phone_overflows: overflow,
      removed_notice: after.includes('Access removed'),
      no_app_left: after.includes('No app can act for you.'),
      printshop_signed_out: printshopSignedOut,
    }),
  );
} finally {
  await browser.close();
}
