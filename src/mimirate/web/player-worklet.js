// AudioWorklet processor: plays the PCM frames the page posts, from a ring buffer.
// Playback starts once PREBUFFER samples are held (a little cover for network jitter);
// when the buffer runs dry it plays silence and counts an underrun.
const CAPACITY = 24000 * 4; // 4 s at 24 kHz: the page never posts more than it plays
const PREBUFFER = 1920 * 2; // two 80 ms frames

class MimiratePlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ring = new Float32Array(CAPACITY);
    this.read = 0;
    this.write = 0;
    this.held = 0;
    this.started = false;
    this.played = 0;
    this.underruns = 0;
    this.dropped = 0;
    this.lastReport = 0;
    this.port.onmessage = (e) => this.push(e.data);
  }

  push(samples) {
    if (!(samples instanceof Float32Array)) return;
    if (this.held + samples.length > CAPACITY) {
      this.dropped += samples.length; // the page fell far behind: drop, never grow
      return;
    }
    for (let i = 0; i < samples.length; i++) {
      this.ring[this.write] = samples[i];
      this.write = (this.write + 1) % CAPACITY;
    }
    this.held += samples.length;
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    if (!this.started && this.held >= PREBUFFER) this.started = true;
    if (this.started) {
      const n = Math.min(out.length, this.held);
      for (let i = 0; i < n; i++) {
        out[i] = this.ring[this.read];
        this.read = (this.read + 1) % CAPACITY;
      }
      this.held -= n;
      this.played += n;
      if (n < out.length) {
        out.fill(0, n);
        this.underruns += 1;
        this.started = false; // refill the cover before playing again
      }
    }
    if (currentTime - this.lastReport > 0.25) {
      this.lastReport = currentTime;
      this.port.postMessage({
        played: this.played, underruns: this.underruns, held: this.held, dropped: this.dropped,
      });
    }
    return true;
  }
}

registerProcessor("mimirate-player", MimiratePlayer);
