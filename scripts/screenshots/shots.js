// Screenshots of the printshop story at desktop and phone widths.
const { chromium } = require('playwright-core');
const out = process.argv[2];
(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
  // Two users: a consent once given is remembered, and each width should show the page.
  for (const [name, viewport, mobile, user] of [['desktop', { width: 1280, height: 800 }, false, 'alice'], ['phone', { width: 390, height: 844 }, true, 'alice.liddell']]) {
    const context = await browser.newContext({ viewport, isMobile: mobile, deviceScaleFactor: mobile ? 2 : 1 });
    const page = await context.newPage();
    await page.goto('http://127.0.0.1:8092/');
    await page.screenshot({ path: `${out}/printshop-signed-out-${name}.png` });
    await page.click('text=Sign in with Valet');
    await page.waitForSelector('input[name=password]');
    await page.screenshot({ path: `${out}/valet-sign-in-${name}.png` });
    await page.fill('input[name=username]', user);
    await page.fill('input[name=password]', 'a long passphrase');
    await Promise.all([page.waitForNavigation(), page.press('input[name=password]', 'Enter')]);
    await page.waitForSelector('button[value=approve]');
    await page.screenshot({ path: `${out}/valet-consent-${name}.png` });
    await Promise.all([page.waitForNavigation(), page.click('button[value=approve]')]);
    await page.waitForSelector('text=Signed in as');
    await page.screenshot({ path: `${out}/printshop-signed-in-${name}.png` });
    await Promise.all([page.waitForNavigation(), page.click('text=Sign out')]);
    await page.waitForSelector('text=Sign in with Valet');
    await context.close();
  }
  await browser.close();
  console.log('done');
})().catch((e) => { console.error(e); process.exit(1); });
