// Drives the omnivox gradio app in headless Chromium: upload an image, generate, wait for the 3D viewer and the
// GLB download, save screenshots; then the same on the "Texture a mesh" tab.
// Usage: node app_flow.js URL IMAGE MESH OUT_DIR   (prints a JSON summary on its last line)
const path = require('path');
const { chromium } = require('playwright-core');

const [url, image, mesh, outDir] = process.argv.slice(2);
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

// Every distinct text of a status line (queue position, stage progress) until it reports an outcome.
async function followStatus(page, selector, timeoutMs) {
  const seen = [];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = (await page.locator(selector).innerText()).trim();
    if (seen[seen.length - 1] !== text) seen.push(text);
    if (/^(Done|Failed|Cancelled|Error)/.test(text)) return seen;
    if (Date.now() > deadline) throw new Error(`${selector} did not finish: ${text}`);
    await page.waitForTimeout(100);
  }
}

async function saveResult(page, prefix, viewer, button) {
  await page.locator(`${viewer} canvas`).waitFor({ state: 'visible', timeout: 60000 });
  await page.locator(button).waitFor({ state: 'visible', timeout: 30000 });
  await page.waitForTimeout(3000); // let the viewer load the GLB and draw it
  await page.screenshot({ path: path.join(outDir, `${prefix}.png`), fullPage: true });
  await page.locator(`${viewer} canvas`).screenshot({ path: path.join(outDir, `${prefix}_viewer.png`) });
  const [download] = await Promise.all([page.waitForEvent('download'), page.locator(button).click()]);
  const file = path.join(outDir, `${prefix}.glb`);
  await download.saveAs(file);
  return file;
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true, args: FLAGS });
  const summary = { errors: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 }, acceptDownloads: true });
    page.on('pageerror', (e) => summary.errors.push(e.message));
    await page.goto(url);

    // Image to 3D
    await page.locator('#generate').waitFor();
    await page.locator('#input-image input[type=file]').setInputFiles(image);
    await page.locator('#input-image img').first().waitFor();
    await page.locator('#pipeline-type').getByLabel('512', { exact: true }).check();
    await page.locator('#texture-size').getByLabel('512', { exact: true }).check();
    await page.locator('#generate').click();
    summary.statuses = await followStatus(page, '#status', 240000);
    summary.download = await saveResult(page, 'generate', '#viewer', '#download');
    summary.video = await page.locator('#turntable video').count();
    summary.panel = await page.locator('#pbr-panel img').count();

    // Texture a mesh
    await page.getByRole('tab', { name: 'Texture a mesh' }).click();
    await page.locator('#texture-mesh input[type=file]').setInputFiles(mesh);
    await page.locator('#texture-image input[type=file]').setInputFiles(image);
    await page.locator('#texture-image img').first().waitFor();
    await page.locator('#texture-resolution').getByLabel('512', { exact: true }).check();
    await page.locator('#texture-texture-size').getByLabel('512', { exact: true }).check();
    await page.locator('#texture').click();
    summary.texture_statuses = await followStatus(page, '#texture-status', 240000);
    summary.texture_download = await saveResult(page, 'texture', '#texture-viewer', '#texture-download');
  } catch (e) {
    summary.errors.push(String((e && e.message) || e));
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(summary));
})();
