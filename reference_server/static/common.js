// Shared by the console and the patient page: the fragment, DOM helpers, one WebSocket client.
// Nothing here stores anything: no cookies, no localStorage, no sessionStorage.
"use strict";

const QC = (() => {
  const ROOM = /^[a-z0-9-]{1,64}$/;

  /** The URL fragment's key=value pairs (the token travels here: browsers never send it). */
  function fragment() {
    const params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    const out = {};
    for (const [key, value] of params) out[key] = value;
    return out;
  }

  /** The WebSocket endpoint of the server that served this page. */
  function endpoint() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${window.location.host}/v1/ws`;
  }

  /** An element with attributes and children; text goes in as text nodes, never as HTML. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** Remove every child (and so every text) of a node. */
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  /**
   * One connection speaking the protocol: `hello` first, then requests answered by `ok`/`error`
   * matched on `ref`. Events (frames without a pending ref) go to `onEvent`; unknown frames and
   * unknown fields are passed on and ignored by the pages (the protocol may add to them).
   */
  class Client {
    constructor({ onEvent, onClose }) {
      this.onEvent = onEvent;
      this.onClose = onClose;
      this.pending = new Map();
      this.next = 1;
      this.ws = null;
      this.welcomed = false;
    }

    /** Open and say hello; resolves with the welcome (with or without `ref`), rejects with an error frame. */
    open(hello) {
      return new Promise((resolve, reject) => {
        let ws;
        try {
          ws = new WebSocket(endpoint());
        } catch (error) {
          reject({ code: "connect_failed", message: String(error) });
          return;
        }
        this.ws = ws;
        ws.addEventListener("open", () => ws.send(JSON.stringify({ ...hello, ref: "hello" })));
        ws.addEventListener("message", (event) => {
          let frame;
          try {
            frame = JSON.parse(event.data);
          } catch (_) {
            return;
          }
          if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") return;
          if (!this.welcomed) {
            if (frame.type === "welcome") {
              this.welcomed = true;
              resolve(frame);
            } else if (frame.type === "error") {
              reject(frame);
            }
            return; // anything else before the welcome is not for us
          }
          if ((frame.type === "ok" || frame.type === "error") && this.pending.has(frame.ref)) {
            const settle = this.pending.get(frame.ref);
            this.pending.delete(frame.ref);
            settle(frame);
            return;
          }
          this.onEvent(frame);
        });
        ws.addEventListener("close", (event) => {
          if (!this.welcomed) reject({ code: "closed", message: `connection closed (${event.code})` });
          for (const settle of this.pending.values()) settle({ type: "error", code: "closed" });
          this.pending.clear();
          this.ws = null;
          this.onClose(event.code, this.welcomed);
        });
      });
    }

    /** Send a request; resolves with its `ok` or `error` frame (never rejects). */
    request(frame) {
      return new Promise((resolve) => {
        if (this.ws === null || this.ws.readyState !== WebSocket.OPEN) {
          resolve({ type: "error", code: "closed" });
          return;
        }
        const ref = `r${this.next++}`;
        this.pending.set(ref, resolve);
        this.ws.send(JSON.stringify({ ...frame, ref }));
      });
    }

    close() {
      if (this.ws !== null) this.ws.close(1000);
    }
  }

  return { ROOM, fragment, endpoint, el, clear, Client };
})();
