// The clinician console: the queue, the patient-information panel, the chat box and settings,
// driven only by the protocol's frames (docs/console.md). The page holds the text of one
// conversation at most, the chat box's, and drops it (DOM nodes and objects) when the server
// says `erased`, when the box leaves that patient, or when the connection ends. It stores nothing.
"use strict";

(() => {
  const { el, clear, Client } = QC;
  const $ = (id) => document.getElementById(id);

  const REASONS = {
    chat_closed: "the chat box was closed",
    viewed_other: "another patient's chat was opened",
    call_started: "another call was started",
    refresh: "the console was reloaded or opened elsewhere",
    not_in_view: "the patient left while their chat was not open",
  };
  const ERRORS = {
    patient_gone: "That patient has left: messages can no longer be sent to them.",
    not_found: "That conversation is no longer available (it has been erased).",
    call_in_progress: "Another call is in progress: end it first.",
    not_in_call: "No call is in progress.",
    too_large: "That message is too long.",
    rate_limited: "Too many requests: wait a moment.",
    closed: "The console is not connected.",
  };

  /** Everything the page knows. `conversation` is the chat box's, and the only message text held. */
  const S = {
    client: null,
    room: "",
    token: "",
    connected: false,
    queue: new Map(), // id -> {id, name, state, unread, joinedAt}
    order: [], // ids in queue order
    departedName: null, // {id, name}: a departed patient the box still shows
    box: { state: "closed", patient: null, present: false },
    conversation: null, // {patient, messages: Map(id -> {id, from, text, ts}), truncated}
    call: null, // patient id
    notifications: true,
    patientChat: true,
    info: null, // patient id shown in the information panel
    maxTextChars: null,
  };

  // ------------------------------------------------------------------ connection

  function start() {
    const params = QC.fragment();
    if (!params.room || !QC.ROOM.test(params.room) || !params.token) {
      showLogin(params.room || "");
      return;
    }
    S.room = params.room;
    S.token = params.token;
    connect();
  }

  function showLogin(room) {
    $("login").hidden = false;
    $("login-room").value = room;
    document.body.dataset.connection = "login";
    $("login-room").focus();
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const room = $("login-room").value.trim();
    const token = $("login-token").value.trim();
    if (!QC.ROOM.test(room) || !token) return;
    $("login-token").value = "";
    // The fragment only: a refresh reconnects, and nothing reaches a request line or a Referer.
    window.history.replaceState(null, "", `#room=${encodeURIComponent(room)}&token=${encodeURIComponent(token)}`);
    $("login").hidden = true;
    S.room = room;
    S.token = token;
    connect();
  });

  async function connect() {
    wipe();
    document.body.dataset.connection = "connecting";
    setBanner("Connecting…");
    const client = new Client({ onEvent, onClose });
    S.client = client;
    let welcome;
    try {
      welcome = await client.open({ type: "hello", role: "clinician", room: S.room, token: S.token });
    } catch (error) {
      if (S.client !== client) return;
      S.client = null;
      document.body.dataset.connection = "failed";
      if (error && error.code === "unauthorized") {
        setBanner("The token does not match this room.");
        showLogin(S.room);
      } else {
        setBanner(`Could not open the console (${(error && error.code) || "error"}).`, true);
      }
      return;
    }
    if (S.client !== client) return;
    S.connected = true;
    document.body.dataset.connection = "open";
    setBanner(null);
    applyWelcome(welcome);
  }

  function onClose(code, welcomed) {
    if (!welcomed) return; // connect() reports it
    S.client = null;
    S.connected = false;
    wipe();
    document.body.dataset.connection = code === 4000 ? "replaced" : "closed";
    setBanner(code === 4000
      ? "This console was opened in another tab or window; this one has stopped. Its conversations were erased."
      : `The console is disconnected (code ${code}). Conversations are erased when the console disconnects.`, true);
    render();
  }

  /** Forget everything the connection brought: conversations, names, badges. */
  function wipe() {
    dropConversation();
    S.queue.clear();
    S.order = [];
    S.departedName = null;
    S.box = { state: "closed", patient: null, present: false };
    S.call = null;
    S.info = null;
    clear($("notices"));
  }

  function setBanner(text, reconnect = false) {
    const banner = $("connection");
    clear(banner);
    banner.hidden = text === null;
    if (text === null) return;
    banner.append(text);
    if (reconnect) {
      banner.append(" ", el("button", { type: "button", "data-action": "reconnect", text: "Reconnect",
        onclick: () => connect() }));
    }
  }

  function applyWelcome(w) {
    $("room-name").textContent = typeof w.room === "string" ? w.room : S.room;
    for (const entry of Array.isArray(w.queue) ? w.queue : []) {
      if (!entry || typeof entry.patient !== "string") continue;
      addPatient(entry.patient, entry.name, entry.state, entry.unread, entry.joined_at);
    }
    const call = w.call && typeof w.call.patient === "string" ? w.call.patient : null;
    S.call = call;
    if (w.settings && typeof w.settings.chat_notifications === "boolean") S.notifications = w.settings.chat_notifications;
    if (w.room_settings && typeof w.room_settings.patient_initiated_chat === "boolean") {
      S.patientChat = w.room_settings.patient_initiated_chat;
    }
    if (w.limits && Number.isInteger(w.limits.max_text_chars)) S.maxTextChars = w.limits.max_text_chars;
    const box = w.chat_box || {};
    setBox(box.state, box.patient, box.patient_present);
    if (S.box.state === "open" && S.box.patient !== null) loadConversation(S.box.patient);
    render();
  }

  // ------------------------------------------------------------------ events

  function onEvent(f) {
    switch (f.type) {
      case "patient_joined":
        addPatient(f.patient, f.name, "waiting", 0, f.joined_at);
        break;
      case "patient_left":
        patientLeft(f.patient);
        break;
      case "erased":
        erased(f.patient, f.reason);
        break;
      case "message":
        if (S.conversation !== null && S.conversation.patient === f.patient) keepMessage(f);
        break; // another patient's text is not kept: open_chat reads it when asked
      case "chat_box":
        setBox(f.state, f.patient, f.patient_present);
        break;
      case "unread": {
        const entry = S.queue.get(f.patient);
        if (entry && Number.isInteger(f.count)) entry.unread = f.count;
        break;
      }
      case "notify":
        if (S.notifications) raiseNotification(f.patient);
        break;
      default:
        return; // frames this page does not know are ignored
    }
    render();
  }

  function addPatient(id, name, state, unread, joinedAt) {
    if (typeof id !== "string") return;
    if (!S.queue.has(id)) S.order.push(id);
    S.queue.set(id, {
      id,
      name: typeof name === "string" ? name : "(no name)",
      state: state === "in_call" ? "in_call" : "waiting",
      unread: Number.isInteger(unread) ? unread : 0,
      joinedAt: typeof joinedAt === "number" ? joinedAt : null,
    });
  }

  function patientLeft(id) {
    const entry = S.queue.get(id);
    if (entry && S.box.patient === id) S.departedName = { id, name: entry.name };
    S.queue.delete(id);
    S.order = S.order.filter((other) => other !== id);
    if (S.call === id) S.call = null;
    if (S.info === id) S.info = null;
    removeNotifications(id);
  }

  function erased(id, reason) {
    if (S.conversation !== null && S.conversation.patient === id) dropConversation();
    if (S.departedName !== null && S.departedName.id === id) S.departedName = null;
    if (!S.queue.has(id)) removeNotifications(id);
    const why = REASONS[reason] || "the server erased it";
    addNotice(reason === "refresh" ? `Every conversation was erased: ${why}.`
      : S.queue.has(id) ? `The conversation with ${S.queue.get(id).name} was erased: ${why}.`
        : `A departed patient's conversation was erased: ${why}.`, { erased: reason || "unknown" });
  }

  /** Drop the conversation's text: the objects here, and the DOM nodes in render(). */
  function dropConversation() {
    if (S.conversation !== null) S.conversation.messages.clear();
    S.conversation = null;
    $("send-text").value = "";
    clear($("messages"));
  }

  function setBox(state, patient, present) {
    const valid = state === "open" || state === "minimized" ? state : "closed";
    const who = valid === "closed" || typeof patient !== "string" ? null : patient;
    S.box = { state: who === null ? "closed" : valid, patient: who, present: who !== null && present !== false };
    if (S.conversation !== null && S.conversation.patient !== who) dropConversation();
    if (who !== null && S.conversation === null) S.conversation = { patient: who, messages: new Map(), truncated: false };
    if (S.departedName !== null && S.departedName.id !== who) S.departedName = null;
    if (who !== null && !S.queue.has(who) && S.departedName === null) S.box.present = false;
  }

  function keepMessage(m) {
    if (!Number.isInteger(m.id) || typeof m.text !== "string") return;
    S.conversation.messages.set(m.id, {
      id: m.id,
      from: m.from === "clinician" ? "clinician" : "patient",
      text: m.text,
      ts: typeof m.ts === "number" ? m.ts : null,
    });
  }

  // ------------------------------------------------------------------ requests

  async function request(frame) {
    if (S.client === null) return { type: "error", code: "closed" };
    const answer = await S.client.request(frame);
    if (answer.type === "error") addNotice(ERRORS[answer.code] || `The server refused that (${answer.code}).`,
      { error: answer.code });
    render();
    return answer;
  }

  async function loadConversation(id) {
    const answer = await request({ type: "open_chat", patient: id });
    if (answer.type !== "ok" || S.conversation === null || S.conversation.patient !== id) return;
    for (const m of Array.isArray(answer.messages) ? answer.messages : []) keepMessage(m);
    S.conversation.truncated = answer.truncated === true;
    removeNotifications(id);
    render();
    $("send-text").focus();
  }

  async function send() {
    const text = $("send-text").value;
    const patient = S.box.patient;
    if (!text.trim() || patient === null || !S.box.present) return;
    const answer = await request({ type: "send", patient, text });
    if (answer.type !== "ok") return;
    if (S.conversation !== null && S.conversation.patient === patient) {
      keepMessage({ id: answer.id, from: "clinician", text, ts: answer.ts });
      $("send-text").value = "";
    }
    render();
  }

  async function startCall(id) {
    const answer = await request({ type: "start_call", patient: id });
    if (answer.type !== "ok") return;
    S.call = id;
    const entry = S.queue.get(id);
    if (entry) entry.state = "in_call";
    render();
  }

  async function endCall() {
    await request({ type: "end_call" });
  }

  // ------------------------------------------------------------------ notifications

  function raiseNotification(id) {
    const entry = S.queue.get(id);
    if (!entry) return;
    if ("Notification" in window && Notification.permission === "granted") {
      // No name and no text: an operating system keeps its notifications after this page erases.
      new Notification("New chat message", { body: "A patient in your waiting room wrote to you.", tag: id });
      return;
    }
    removeNotifications(id);
    const note = el("div", { class: "notice notification", role: "status", "data-notification": "", "data-patient": id },
      `New message from ${entry.name}. `,
      el("button", { type: "button", "data-action": "open-chat", "data-patient": id, text: "Open chat",
        onclick: () => loadConversation(id) }));
    $("notices").prepend(note);
  }

  function removeNotifications(id) {
    for (const note of [...$("notices").querySelectorAll("[data-notification]")]) {
      if (note.dataset.patient === id) note.remove();
    }
  }

  function addNotice(text, data) {
    const attrs = { class: "notice", role: "status" };
    for (const [key, value] of Object.entries(data)) attrs[`data-${key}`] = value;
    const note = el("div", attrs, text, " ",
      el("button", { type: "button", class: "icon", "aria-label": "Dismiss", text: "\u2715",
        onclick: (event) => event.target.parentElement.remove() }));
    $("notices").prepend(note);
    const notices = $("notices").querySelectorAll(".notice:not([data-notification])");
    for (let i = 5; i < notices.length; i++) notices[i].remove();
  }

  // ------------------------------------------------------------------ rendering

  function place(id) {
    let n = 0;
    for (const other of S.order) {
      const entry = S.queue.get(other);
      if (entry && entry.state === "waiting") n += 1;
      if (other === id) return n;
    }
    return null;
  }

  function nameOf(id) {
    if (S.queue.has(id)) return S.queue.get(id).name;
    if (S.departedName !== null && S.departedName.id === id) return S.departedName.name;
    return "a patient";
  }

  function render() {
    renderQueue();
    renderInfo();
    renderBox();
    renderStatus();
  }

  function renderStatus() {
    const status = !S.connected ? "—" : S.call !== null ? "on_call" : "online";
    $("provider-status").textContent = { on_call: "On a call", online: "Online", "—": "—" }[status];
    $("provider-status").dataset.providerStatus = status;
    $("call-status").dataset.call = S.call === null ? "none" : "in_call";
    $("call-status").textContent = S.call === null ? "No call in progress" : `In a call with ${nameOf(S.call)}`;
    $("call-bar").hidden = S.call === null;
    $("call-name").textContent = S.call === null ? "" : nameOf(S.call);
    $("notifications-switch").checked = S.notifications;
    $("notifications-switch").disabled = !S.connected;
    $("patient-chat-switch").checked = S.patientChat;
    $("patient-chat-switch").disabled = !S.connected;
    const api = "Notification" in window;
    $("permission-hint").hidden = !api || Notification.permission === "granted";
  }

  function renderQueue() {
    const list = $("queue");
    const wanted = new Set(S.order);
    for (const item of [...list.children]) if (!wanted.has(item.dataset.patient)) item.remove();
    S.order.forEach((id, index) => {
      const entry = S.queue.get(id);
      let item = [...list.children].find((child) => child.dataset.patient === id);
      if (!item) item = queueItem(id);
      if (list.children[index] !== item) list.insertBefore(item, list.children[index] || null);
      item.querySelector(".name").textContent = entry.name;
      const where = entry.state === "in_call" ? "In call" : `Place ${place(id)}`;
      item.querySelector(".place").textContent = where;
      item.dataset.state = entry.state;
      const badge = item.querySelector(".badge");
      badge.dataset.unread = String(entry.unread);
      badge.textContent = entry.unread > 0 ? String(entry.unread) : "";
      badge.hidden = entry.unread === 0;
      badge.setAttribute("aria-label", `${entry.unread} unread message${entry.unread === 1 ? "" : "s"}`);
      const menu = item.querySelector("[data-action=menu]");
      menu.setAttribute("aria-label", `Patient information: ${entry.name}`);
      menu.setAttribute("aria-expanded", String(S.info === id));
    });
    $("queue-empty").hidden = S.order.length > 0;
    $("queue-count").textContent = S.order.length > 0 ? `(${S.order.length})` : "";
  }

  function queueItem(id) {
    return el("li", { "data-patient": id, class: "entry" },
      el("span", { class: "name" }),
      el("span", { class: "place" }),
      el("span", { class: "badge", "data-unread": "0", role: "status", hidden: true }),
      el("button", { type: "button", class: "dots", "data-action": "menu", "aria-haspopup": "dialog",
        "aria-controls": "info", text: "\u22ee", onclick: () => openInfo(id) }));
  }

  function openInfo(id) {
    S.info = S.info === id ? null : id;
    render();
    if (S.info !== null) $("info-chat").focus();
  }

  function renderInfo() {
    const panel = $("info");
    const entry = S.info === null ? null : S.queue.get(S.info);
    panel.hidden = !entry;
    panel.dataset.patient = entry ? entry.id : "";
    if (!entry) return;
    $("info-name").textContent = entry.name;
    $("info-state").textContent = entry.state === "in_call" ? "In a call with you" : `Waiting: place ${place(entry.id)} in the queue`;
    $("info-joined").textContent = entry.joinedAt !== null
      ? `Checked in at ${new Date(entry.joinedAt).toLocaleTimeString()}` : "";
    $("info-chat").dataset.patient = entry.id;
    $("info-call").dataset.patient = entry.id;
    $("info-call").disabled = entry.state !== "waiting" || S.call !== null;
    $("info-call").title = S.call !== null && entry.state === "waiting" ? "End the current call first" : "";
  }

  function renderBox() {
    const box = $("chat-box");
    const { state, patient, present } = S.box;
    box.dataset.chatBox = state;
    box.dataset.patient = patient === null ? "" : patient;
    box.dataset.patientPresent = String(present);
    box.hidden = state === "closed";
    box.setAttribute("aria-label", patient === null ? "Chat" : `Chat with ${nameOf(patient)}`);
    $("chat-body").hidden = state !== "open";
    $("chat-name").textContent = patient === null ? "" : nameOf(patient);
    $("chat-presence").textContent = patient === null ? "" : present ? "" : "(has left)";
    $("chat-expand").hidden = state !== "minimized";
    $("chat-restore").setAttribute("aria-label", state === "minimized" ? `Open the chat with ${nameOf(patient)}` : `Chat with ${nameOf(patient)}`);
    $("chat-restore").dataset.patient = patient === null ? "" : patient;
    $("chat-minimize").hidden = state !== "open";
    const left = patient !== null && !present;
    $("left-notice").hidden = !left;
    $("left-notice").textContent = left
      ? `${nameOf(patient)} has left. You can no longer send messages. This conversation is erased when you close this chat, open another patient's chat or start a call.`
      : "";
    $("send-text").disabled = left || !S.connected;
    $("send-button").disabled = left || !S.connected;
    const messages = S.conversation === null ? [] : [...S.conversation.messages.values()].sort((a, b) => a.id - b.id);
    $("chat-truncated").hidden = !(S.conversation !== null && S.conversation.truncated);
    const list = $("messages");
    const have = new Map([...list.children].map((item) => [item.dataset.messageId, item]));
    if (messages.length !== have.size || messages.some((m) => !have.has(String(m.id)))) {
      clear(list);
      for (const m of messages) {
        list.append(el("li", { "data-message-id": m.id, "data-from": m.from, class: `message ${m.from}` },
          el("span", { class: "who", text: m.from === "clinician" ? "You" : nameOf(patient) }),
          el("span", { class: "text", text: m.text }),
          m.ts !== null ? el("time", { class: "ts", text: new Date(m.ts).toLocaleTimeString() }) : null));
      }
      list.scrollTop = list.scrollHeight;
    }
  }

  // ------------------------------------------------------------------ controls

  $("info-chat").addEventListener("click", () => {
    if (S.info === null) return;
    const id = S.info;
    S.info = null;
    loadConversation(id);
  });
  $("info-call").addEventListener("click", () => { if (S.info !== null) startCall(S.info); });
  $("info-close").addEventListener("click", () => { S.info = null; render(); });
  $("chat-restore").addEventListener("click", () => { if (S.box.patient !== null) loadConversation(S.box.patient); });
  $("chat-minimize").addEventListener("click", () => request({ type: "minimize_chat" }));
  $("chat-close").addEventListener("click", () => request({ type: "close_chat" }));
  $("end-call").addEventListener("click", () => endCall());
  $("send-form").addEventListener("submit", (event) => { event.preventDefault(); send(); });
  $("send-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(); }
  });
  $("settings-button").addEventListener("click", () => {
    const panel = $("settings");
    panel.hidden = !panel.hidden;
    $("settings-button").setAttribute("aria-expanded", String(!panel.hidden));
  });
  $("notifications-switch").addEventListener("change", async (event) => {
    const wanted = event.target.checked;
    const answer = await request({ type: "set_notifications", chat: wanted });
    if (answer.type === "ok") S.notifications = wanted;
    render();
  });
  $("patient-chat-switch").addEventListener("change", async (event) => {
    const wanted = event.target.checked;
    const answer = await request({ type: "set_room", patient_initiated_chat: wanted });
    if (answer.type === "ok") S.patientChat = wanted;
    render();
  });
  $("permission-button").addEventListener("click", async () => {
    if ("Notification" in window) await Notification.requestPermission();
    render();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && S.info !== null) { S.info = null; render(); }
  });

  // For browser automation and the tests: a copy of what the page holds (read-only).
  window.queuechatConsole = Object.freeze({
    snapshot: () => JSON.stringify({
      queue: [...S.queue.values()],
      box: S.box,
      departed: S.departedName,
      conversation: S.conversation === null ? null
        : { patient: S.conversation.patient, messages: [...S.conversation.messages.values()] },
      call: S.call,
      notifications: S.notifications,
      patientChat: S.patientChat,
    }),
  });

  start();
  render();
})();
