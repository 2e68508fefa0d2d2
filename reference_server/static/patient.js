// The patient check-in page: name, place in the queue, provider status (R30), chat when the room
// allows it (R31), the call's start and end, and a leave button. It stores nothing.
"use strict";

(() => {
  const { el, clear, Client } = QC;
  const $ = (id) => document.getElementById(id);
  const STATUS = { online: "online", on_call: "on a call with another patient", away: "away" };

  const S = {
    client: null,
    position: null,
    provider: "away",
    patientChat: true,
    clinicianWrote: false,
    call: "none", // none | started | ended
    messages: new Map(),
    stage: "check-in", // check-in | waiting | left
  };

  const params = QC.fragment();
  $("room").value = params.room && QC.ROOM.test(params.room) ? params.room : "";
  if (params.name) $("name").value = params.name.slice(0, 64);
  ($("room").value ? $("name") : $("room")).focus();

  $("check-in").addEventListener("submit", async (event) => {
    event.preventDefault();
    const room = $("room").value.trim();
    const name = $("name").value.trim();
    if (!QC.ROOM.test(room) || !name) return;
    problem(null);
    const client = new Client({ onEvent, onClose });
    S.client = client;
    let welcome;
    try {
      welcome = await client.open({ type: "hello", role: "patient", room, name });
    } catch (error) {
      problem(error && error.code === "capacity" ? "The waiting room is full. Try again later."
        : `Could not check in (${(error && error.code) || "error"}).`);
      return;
    }
    S.stage = "waiting";
    S.position = Number.isInteger(welcome.position) ? welcome.position : null;
    if (typeof welcome.provider_status === "string") S.provider = welcome.provider_status;
    if (typeof welcome.patient_initiated_chat === "boolean") S.patientChat = welcome.patient_initiated_chat;
    $("me").textContent = name;
    render();
    $("send-text").focus();
  });

  function onEvent(f) {
    switch (f.type) {
      case "position":
        if (Number.isInteger(f.position)) S.position = f.position;
        break;
      case "provider_status":
        if (typeof f.status === "string") S.provider = f.status;
        break;
      case "room_settings":
        if (typeof f.patient_initiated_chat === "boolean") S.patientChat = f.patient_initiated_chat;
        break;
      case "call":
        if (f.state === "started" || f.state === "ended") S.call = f.state;
        break;
      case "message":
        keep(f);
        if (f.from === "clinician") S.clinicianWrote = true;
        break;
      default:
        return;
    }
    render();
  }

  function onClose(code, welcomed) {
    if (!welcomed) return;
    S.client = null;
    if (S.stage === "waiting") S.stage = "left";
    if (S.call !== "ended") problem(code === 1000 ? "You have left the waiting room."
      : `The connection was lost (code ${code}). Check in again to rejoin the queue.`);
    render();
  }

  function keep(m) {
    if (!Number.isInteger(m.id) || typeof m.text !== "string") return;
    S.messages.set(m.id, { id: m.id, from: m.from === "clinician" ? "clinician" : "patient", text: m.text });
  }

  function chatAllowed() {
    return S.stage === "waiting" && (S.call === "started" || S.patientChat || S.clinicianWrote);
  }

  async function send() {
    const text = $("send-text").value;
    if (!text.trim() || S.client === null) return;
    const answer = await S.client.request({ type: "send", text });
    if (answer.type === "ok") {
      keep({ id: answer.id, from: "patient", text });
      $("send-text").value = "";
    } else if (answer.code === "chat_disabled") {
      S.patientChat = false;
      S.clinicianWrote = false;
    } else {
      problem(answer.code === "too_large" ? "That message is too long." : `Not sent (${answer.code}).`);
    }
    render();
  }

  $("send-form").addEventListener("submit", (event) => { event.preventDefault(); send(); });
  $("send-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(); }
  });
  $("leave").addEventListener("click", async () => {
    if (S.client === null) return;
    const answer = await S.client.request({ type: "leave" });
    if (answer.type === "ok") { S.stage = "left"; problem("You have left the waiting room."); }
    render();
  });

  function problem(text) {
    $("problem").hidden = text === null;
    $("problem").textContent = text === null ? "" : text;
  }

  function render() {
    document.body.dataset.stage = S.stage;
    $("check-in").hidden = S.stage !== "check-in";
    $("waiting").hidden = S.stage === "check-in";
    $("chat").hidden = S.stage === "check-in";
    const waiting = S.stage === "waiting" && S.call === "none";
    $("position-line").hidden = !waiting;
    $("position-line").dataset.position = S.position === null ? "" : String(S.position);
    $("position").textContent = S.position === null ? "" : String(S.position);
    $("provider").textContent = STATUS[S.provider] || S.provider;
    $("provider").dataset.providerStatus = S.provider;
    $("call").dataset.call = S.call;
    $("call").textContent = S.call === "started"
      ? "Your call has started. (This demonstration has no audio or video.)"
      : S.call === "ended" ? "Your call has ended. Thank you." : "";
    $("leave").hidden = S.stage !== "waiting";
    const allowed = chatAllowed();
    $("chat").dataset.chatAllowed = String(allowed);
    $("chat-disabled").hidden = allowed || S.stage !== "waiting";
    $("send-text").disabled = !allowed;
    $("send-button").disabled = !allowed;
    const list = $("messages");
    const messages = [...S.messages.values()].sort((a, b) => a.id - b.id);
    if (list.children.length !== messages.length) {
      clear(list);
      for (const m of messages) {
        list.append(el("li", { "data-message-id": m.id, "data-from": m.from, class: `message ${m.from}` },
          el("span", { class: "who", text: m.from === "clinician" ? "Clinician" : "You" }),
          el("span", { class: "text", text: m.text })));
      }
    }
  }

  render();
})();
