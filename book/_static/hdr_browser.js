/* The page "On your machine": the paper's experiment (LeNet-5 of §3.3, cross-entropy, SGD with momentum 0.9) in
 * TensorFlow.js, trained in the reader's browser on the CPU ('cpu': TF.js's plain-JavaScript backend) and the GPU
 * ('webgl', and 'webgpu' where the browser has it), from the same initial weights and in the same batch order as
 * the book's PyTorch runs (both exported at build time by hdr_lib.book.browser_export). Nothing comes from the
 * network: TF.js, MNIST (gzipped IDX, decompressed here) and the seeds' starts lie in the site's _static.
 *
 * window.hdrBrowser.run({backend, steps, seed, batchSize, lr}) -> Promise of an hdr-run/2 record.
 */
(function () {
  'use strict';
  const SCRIPT = document.currentScript ? document.currentScript.src : '';
  const STATIC = SCRIPT.replace(/[^/]*$/, '');
  const ASSETS = STATIC + 'hdr-browser/';
  const FROM_DISK = location.protocol === 'file:';
  const N_TRAIN = 60000, N_TEST = 10000, SIDE = 28, PIXELS = 784;
  const BACKENDS = ['cpu', 'webgl', 'webgpu'];
  const WARMUP = 3;  // steps left out of the seconds per step (shader compilation, first allocations)
  const LOADED = {};

  function loadScript(url) {
    if (!LOADED[url]) {
      LOADED[url] = new Promise((resolve, reject) => {
        const s = document.createElement('script');
        s.src = url;
        s.onload = () => resolve();
        s.onerror = () => reject(new Error('could not load ' + url));
        document.head.appendChild(s);
      });
    }
    return LOADED[url];
  }

  function fromBase64(text) {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  async function gunzip(bytes) {
    if (typeof DecompressionStream === 'undefined') throw new Error('this browser has no DecompressionStream');
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  // One of MNIST's four files, gzipped IDX: fetched over HTTP, or from disk as a script (file:// refuses fetch).
  async function mnistFile(name) {
    let gz;
    if (FROM_DISK) {
      await loadScript(ASSETS + name + '.gz.js');
      gz = fromBase64(window.hdrBrowserFiles[name]);
      delete window.hdrBrowserFiles[name];
    } else {
      const response = await fetch(ASSETS + name + '.gz');
      if (!response.ok) throw new Error(name + '.gz: HTTP ' + response.status);
      gz = new Uint8Array(await response.arrayBuffer());
    }
    const raw = await gunzip(gz);
    const view = new DataView(raw.buffer);
    const magic = view.getUint32(0), count = view.getUint32(4);
    const header = magic === 2051 ? 16 : magic === 2049 ? 8 : 0;
    if (!header) throw new Error(name + ': not an IDX file (magic ' + magic + ')');
    return {count: count, data: raw.subarray(header)};
  }

  let dataPromise = null;
  function mnist() {
    if (!dataPromise) {
      dataPromise = Promise.all(['train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte',
        't10k-labels-idx1-ubyte'].map(mnistFile)).then(([xi, yi, xt, yt]) => ({
        trainImages: xi.data, trainLabels: yi.data, testImages: xt.data, testLabels: yt.data}));
      dataPromise.catch(() => { dataPromise = null; });
    }
    return dataPromise;
  }

  async function seedStart(seed) {
    await loadScript(ASSETS + 'seed' + seed + '.js');
    const s = window.hdrBrowserSeeds && window.hdrBrowserSeeds[seed];
    if (!s) throw new Error('no exported start for seed ' + seed + ' (the book exports seeds 0-4)');
    const weights = {};
    for (const [name, w] of Object.entries(s.weights)) {
      const bytes = fromBase64(w.b64);
      weights[name] = {shape: w.shape, values: new Float32Array(bytes.buffer, 0, bytes.length / 4)};
    }
    const ob = fromBase64(s.order);
    return {weights: weights, order: new Uint16Array(ob.buffer, 0, ob.length / 2), epoch: s.epoch};
  }

  async function loadTf(backend) {
    await loadScript(STATIC + 'tf.min.js');
    if (backend === 'webgpu') await loadScript(STATIC + 'tf-backend-webgpu.min.js');
    await loadScript(ASSETS + 'versions.js');
    return window.tf;
  }

  // Why a backend cannot run here (null: try it).
  function unavailable(backend) {
    if (backend === 'webgl') {
      const c = document.createElement('canvas');
      if (!(c.getContext('webgl2') || c.getContext('webgl'))) return 'this browser gives the page no WebGL context';
    }
    if (backend === 'webgpu' && !navigator.gpu) return 'this browser has no WebGPU (navigator.gpu is absent)';
    return null;
  }

  async function gpuRenderer() {
    try {
      const c = document.createElement('canvas');
      const gl = c.getContext('webgl2') || c.getContext('webgl');
      if (gl) {
        const ext = gl.getExtension('WEBGL_debug_renderer_info');
        const name = gl.getParameter(ext ? ext.UNMASKED_RENDERER_WEBGL : gl.RENDERER);
        const lose = gl.getExtension('WEBGL_lose_context');
        if (lose) lose.loseContext();
        if (name) return String(name);
      }
      if (navigator.gpu) {
        const adapter = await navigator.gpu.requestAdapter();
        const info = adapter && (adapter.info || (adapter.requestAdapterInfo && await adapter.requestAdapterInfo()));
        if (info) return [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' ') || null;
      }
    } catch (e) { /* the browser does not say */ }
    return null;
  }

  function session() {
    const r = new Uint8Array(6);
    crypto.getRandomValues(r);
    return 'browser-' + new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '') + '-' +
      Array.from(r, b => b.toString(16).padStart(2, '0')).join('');
  }

  function forward(tf, v, x) {
    let h = tf.relu(tf.add(tf.conv2d(x, v.conv1_w, 1, 'valid'), v.conv1_b));
    h = tf.maxPool(h, 2, 2, 'valid');
    h = tf.relu(tf.add(tf.conv2d(h, v.conv2_w, 1, 'valid'), v.conv2_b));
    h = tf.maxPool(h, 2, 2, 'valid');
    h = tf.reshape(h, [h.shape[0], -1]);  // NHWC flattening: fc1's rows were reordered for it at export
    h = tf.relu(tf.add(tf.matMul(h, v.fc1_w), v.fc1_b));
    h = tf.relu(tf.add(tf.matMul(h, v.fc2_w), v.fc2_b));
    return tf.add(tf.matMul(h, v.fc3_w), v.fc3_b);  // logits; the softmax lives in the loss (§3.4)
  }

  function batch(tf, images, labels, indices) {
    const n = indices.length, x = new Float32Array(n * PIXELS), y = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const j = indices[i], base = j * PIXELS;
      for (let p = 0; p < PIXELS; p++) x[i * PIXELS + p] = images[base + p] / 255;  // §3.2: [0, 1]
      y[i] = labels[j];
    }
    return {x: tf.tensor4d(x, [n, SIDE, SIDE, 1]), y: tf.oneHot(tf.tensor1d(y, 'int32'), 10)};
  }

  async function accuracy(tf, v, data) {
    let correct = 0;
    const chunk = 500;
    for (let start = 0; start < N_TEST; start += chunk) {
      const idx = Array.from({length: Math.min(chunk, N_TEST - start)}, (_, i) => start + i);
      const hits = tf.tidy(() => {
        const b = batch(tf, data.testImages, data.testLabels, idx);
        return tf.sum(tf.cast(tf.equal(tf.argMax(forward(tf, v, b.x), 1), tf.argMax(b.y, 1)), 'int32'));
      });
      correct += (await hits.data())[0];
      hits.dispose();
    }
    return 100 * correct / N_TEST;
  }

  function check(options) {
    const o = Object.assign({backend: 'cpu', steps: 20, seed: 0, batchSize: 64, lr: 0.01}, options || {});
    if (!BACKENDS.includes(o.backend)) throw new Error('backend must be one of ' + BACKENDS.join(', ') + ', got ' + o.backend);
    const most = Math.ceil(N_TRAIN / o.batchSize);
    for (const [k, lo, hi] of [['batchSize', 1, 1024], ['seed', 0, 4], ['steps', 1, Infinity]]) {
      if (!Number.isInteger(o[k]) || o[k] < lo || o[k] > hi) throw new Error(k + ' must be an integer in [' + lo + ', ' + hi + '], got ' + o[k]);
    }
    if (o.steps > most) throw new Error('steps must be at most one epoch (' + most + ' at batch ' + o.batchSize + '), got ' + o.steps);
    if (!(o.lr > 0 && o.lr <= 1)) throw new Error('lr must be in (0, 1], got ' + o.lr);
    return o;
  }

  function mean(xs) { return xs.reduce((a, b) => a + b, 0) / xs.length; }

  // One training run on one backend: the record (hdr-run/2). onStep(step, steps, loss) after every step.
  async function run(options) {
    const o = check(options);
    const reason = unavailable(o.backend);
    if (reason) throw new Error(o.backend + ' unavailable: ' + reason);
    if (o.backend === 'webgpu' && !(await navigator.gpu.requestAdapter().catch(() => null))) {
      throw new Error('webgpu unavailable: the browser has WebGPU but gives no adapter (no usable GPU, or WebGPU is off)');
    }
    const tf = await loadTf(o.backend);
    let ok = false;
    try { ok = await tf.setBackend(o.backend); } catch (e) { throw new Error(o.backend + ' failed to start: ' + e.message); }
    if (!ok) throw new Error(o.backend + ' failed to start (TensorFlow.js could not initialise it; see the console)');
    await tf.ready();
    const [data, start, renderer] = await Promise.all([mnist(), seedStart(o.seed), gpuRenderer()]);
    let hidden = document.hidden;
    const onHidden = () => { if (document.hidden) hidden = true; };
    document.addEventListener('visibilitychange', onHidden);
    const v = {};
    for (const [name, w] of Object.entries(start.weights)) v[name] = tf.variable(tf.tensor(w.values, w.shape), true, name + '_' + Date.now());
    const optimizer = tf.train.momentum(o.lr, 0.9);  // PyTorch's SGD: buf = 0.9 buf + g; p -= lr buf
    const losses = [], stepSeconds = [];
    const began = new Date().toISOString();
    try {
      for (let s = 0; s < o.steps; s++) {
        const t0 = performance.now();
        const b = batch(tf, data.trainImages, data.trainLabels, start.order.subarray(s * o.batchSize, Math.min(N_TRAIN, (s + 1) * o.batchSize)));
        const loss = optimizer.minimize(() => tf.losses.softmaxCrossEntropy(b.y, forward(tf, v, b.x)), true, Object.values(v));
        const value = (await loss.data())[0];  // read back: the step's queued GPU work is counted
        stepSeconds.push((performance.now() - t0) / 1000);
        loss.dispose(); b.x.dispose(); b.y.dispose();
        losses.push(value);
        if (!Number.isFinite(value)) break;
        if (o.onStep) o.onStep(s + 1, o.steps, value);
      }
      const e0 = performance.now();
      const acc = losses.every(Number.isFinite) ? await accuracy(tf, v, data) : null;
      const evalSeconds = (performance.now() - e0) / 1000;
      const timed = stepSeconds.slice(Math.min(WARMUP, stepSeconds.length - 1));
      const train = stepSeconds.reduce((a, b) => a + b, 0);
      const most = Math.ceil(N_TRAIN / o.batchSize);
      const diverged = !losses.every(Number.isFinite);
      return {
        schema: 'hdr-run/2', kind: 'train',
        config: {framework: 'tfjs-' + o.backend, path: 'tfjs', device: 'browser', backend: o.backend, model: 'lenet5',
          variant: 'paper', epochs: 1, max_steps: o.steps, batch_size: o.batchSize, lr: o.lr, momentum: 0.9,
          loss: 'cross_entropy', pixel_scale: '[0,1]', seed: o.seed, amp: 'off', start: 'hdr_lib.train.init_model(seed)',
          batch_order: 'hdr_lib.train.batch_order(seed, 1)'},
        environment: {session: session(), browser: navigator.userAgent, hardware_concurrency: navigator.hardwareConcurrency || null,
          gpu_renderer: renderer, cpu: null, platform: navigator.platform || null, tfjs: Object.assign({}, tf.version, window.hdrBrowserVersions || {}),
          tfjs_backend: tf.getBackend(), page: FROM_DISK ? 'file' : 'http', created_at: began},
        epochs: [{epoch: 1, train_loss: mean(losses), train_seconds: train, test_accuracy: acc, eval_seconds: evalSeconds,
          lr: o.lr, steps: losses.length}],
        status: diverged ? 'diverged' : losses.length === most ? 'complete' : 'incomplete',
        test_accuracy: acc, total_train_seconds: train, total_eval_seconds: evalSeconds,
        deviations_from_paper: ['TensorFlow.js ' + tf.version.tfjs + ' in a web browser (backend ' + o.backend + '), not TensorFlow with CUDA',
          'one epoch at most (' + losses.length + ' of ' + most + ' steps), so no step decay'],
        execution: {backend: o.backend, steps_per_epoch: most, warmup_steps: stepSeconds.length - timed.length,
          seconds_per_step: timed.length ? mean(timed) : null, step_seconds: stepSeconds, loss_read_back_each_step: true,
          hidden_during_run: hidden, throttling_note: hidden ? 'the tab was in the background during the run: the browser throttles it, so its times are too long' : null},
        step_losses: losses,
      };
    } finally {
      document.removeEventListener('visibilitychange', onHidden);
      optimizer.dispose();
      Object.values(v).forEach(t => t.dispose());
    }
  }

  window.hdrBrowser = {run: run, backends: BACKENDS, unavailable: unavailable, records: []};

  // ---- the page's controls (only where the page has its container) ----------------------------------------
  function download(record) {
    const name = 'browser-tfjs-' + record.config.backend + '-s' + record.step_losses.length + '-seed' + record.config.seed +
      '-' + record.environment.session.slice(-12) + '.json';
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([JSON.stringify(record, null, 2)], {type: 'application/json'}));
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, val]) => e.setAttribute(k, val));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function setup(root) {
    root.textContent = '';
    const controls = el('div', {class: 'hdr-browser-controls'});
    const sliders = {};
    for (const [key, label, min, max, step, value] of [['steps', 'steps', 1, 938, 1, 100], ['batchSize', 'batch size', 16, 256, 16, 64],
      ['lr', 'learning rate', 0.001, 0.1, 0.001, 0.01], ['seed', 'seed', 0, 4, 1, 0]]) {
      const wrap = el('label', {class: 'hdr-browser-slider'});
      const input = el('input', {type: 'range', min: min, max: max, step: step, value: value, 'data-key': key});
      const out = el('output', {}, String(value));
      input.addEventListener('input', () => {
        if (key === 'batchSize') {
          const most = Math.ceil(N_TRAIN / Number(input.value));
          sliders.steps.max = most;
          if (Number(sliders.steps.value) > most) sliders.steps.value = most;
          sliders.steps.nextSibling.textContent = sliders.steps.value;
        }
        out.textContent = input.value;
      });
      wrap.append(label + ' ', input, out);
      sliders[key] = input;
      controls.append(wrap);
    }
    const rows = {}, chosen = {cpu: true, webgl: true, webgpu: false};
    const table = el('div', {class: 'hdr-browser-backends'});
    for (const b of BACKENDS) {
      const row = el('div', {class: 'hdr-browser-row'});
      const button = el('button', {type: 'button', class: 'hdr-browser-backend', 'aria-pressed': String(chosen[b])}, b);
      const why = unavailable(b);
      if (why) { chosen[b] = false; button.disabled = true; button.setAttribute('aria-pressed', 'false'); button.textContent = b + ': unavailable (' + why + ')'; }
      button.addEventListener('click', () => { chosen[b] = !chosen[b]; button.setAttribute('aria-pressed', String(chosen[b])); });
      const bar = el('progress', {max: 1, value: 0});
      const text = el('span', {class: 'hdr-browser-status'}, '');
      const save = el('button', {type: 'button', class: 'hdr-browser-download', disabled: ''}, 'Download record');
      row.append(button, bar, text, save);
      table.append(row);
      rows[b] = {button: button, bar: bar, text: text, save: save};
    }
    const go = el('button', {type: 'button', class: 'hdr-browser-run'}, 'Run');
    const plot = el('div', {class: 'hdr-browser-plot', id: 'hdr-browser-plot'});
    const summary = el('p', {class: 'hdr-browser-summary', 'aria-live': 'polite'}, '');
    root.append(controls, table, go, plot, summary);
    const traces = {};
    let lastDraw = 0;
    function draw(force) {
      if (!window.Plotly || (!force && performance.now() - lastDraw < 300)) return;
      lastDraw = performance.now();
      const dash = {cpu: 'solid', webgl: 'dash', webgpu: 'dot'};  // equal losses draw one over the other
      const data = Object.entries(traces).map(([name, ys]) => ({x: ys.map((_, i) => i + 1), y: ys, name: name, mode: 'lines',
        type: 'scatter', line: {dash: dash[name], width: name === 'cpu' ? 4 : 2}}));
      window.Plotly.react(plot, data, {title: {text: 'training loss per step (your browser)'}, xaxis: {title: {text: 'step'}},
        yaxis: {title: {text: 'cross-entropy'}}, margin: {l: 60, r: 20, t: 40, b: 50}, height: 320}, {displayModeBar: false, responsive: true});
    }
    go.addEventListener('click', async () => {
      go.disabled = true;
      summary.textContent = 'loading TensorFlow.js and MNIST (about 12 MB, from this site)...';
      const o = {steps: Number(sliders.steps.value), batchSize: Number(sliders.batchSize.value), lr: Number(sliders.lr.value), seed: Number(sliders.seed.value)};
      const done = {};
      for (const b of BACKENDS.filter(x => chosen[x])) {
        const r = rows[b];
        traces[b] = [];
        r.bar.value = 0; r.save.disabled = true; r.text.textContent = 'starting...';
        try {
          const record = await run(Object.assign({}, o, {backend: b, onStep: (s, n, loss) => {
            r.bar.value = s / n; traces[b].push(loss); r.text.textContent = 'step ' + s + ' of ' + n + ', loss ' + loss.toFixed(4); draw(false);
          }}));
          window.hdrBrowser.records.push(record);
          done[b] = record;
          const sps = record.execution.seconds_per_step;
          r.text.textContent = (sps !== null ? (1000 * sps).toFixed(1) + ' ms per step (after ' + record.execution.warmup_steps + ' warm-up steps), ' : '') +
            'test accuracy ' + (record.test_accuracy === null ? '-' : record.test_accuracy.toFixed(2) + ' %') + ' on 10,000 images' +
            (record.execution.hidden_during_run ? ' (the tab was in the background: throttled, times too long)' : '');
          r.save.disabled = false;
          r.save.onclick = () => download(record);
        } catch (e) {
          r.text.textContent = 'failed: ' + e.message;
          r.button.textContent = b + ': failed (' + e.message + ')';
        }
        draw(true);
      }
      const cpu = done.cpu && done.cpu.execution.seconds_per_step;
      const lines = [];
      for (const g of ['webgl', 'webgpu']) {
        const gpu = done[g] && done[g].execution.seconds_per_step;
        if (cpu && gpu) lines.push('TF.js cpu / ' + g + ' = ' + (cpu / gpu).toFixed(1) + 'x, measured on your machine with TensorFlow.js (' + navigator.hardwareConcurrency + ' logical CPUs)');
      }
      summary.textContent = lines.length ? lines.join('; ') + '. Not the paper\'s TensorFlow/CUDA comparison: see the text above.' : 'Run the cpu backend and a GPU backend with the same settings to see their ratio on your machine.';
      go.disabled = false;
    });
  }

  function init() { const root = document.getElementById('hdr-browser'); if (root) setup(root); }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init); else init();
})();
