//! A real router process and raw WebSocket clients, for the router tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_p2p::identity::{Identity, PublicKey};
use chat_p2p::protocol::{self, Content, Frame, MessageFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

/// How long a test waits for something the router must send. Only a guard
/// against hanging forever; nothing is asserted about timing.
const GUARD: Duration = Duration::from_secs(20);

/// A `chat-p2p router` child process, killed when dropped.
pub struct Router {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its `--data` directory, or for a Redis router the directory beside
    /// which it logs (`<data>.log`).
    data: PathBuf,
    /// Where its queue is: `--data DIR` or `--redis URL`.
    queue: Vec<String>,
}

impl Router {
    /// Starts a router on a free port with its queue in `data`.
    pub fn start(data: &Path, extra: &[&str]) -> Router {
        Router::start_at(data, "127.0.0.1:0", extra)
    }

    /// Starts a router listening on `listen` with its queue in `data`.
    pub fn start_at(data: &Path, listen: &str, extra: &[&str]) -> Router {
        Router::start_with_env(data, listen, extra, &[])
    }

    /// [`Router::start_at`] with environment variables set.
    pub fn start_with_env(
        data: &Path,
        listen: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Router {
        let queue = vec!["--data".to_owned(), data.display().to_string()];
        Router::spawn(data, queue, listen, extra, vars)
    }

    /// Starts a router on a free port with its queue in the Redis at
    /// `url`, logging to `<home>.log` (`home` is its CHAT_HOME).
    pub fn start_redis(home: &Path, url: &str, extra: &[&str]) -> Router {
        Router::start_redis_with_env(home, url, extra, &[])
    }

    /// [`Router::start_redis`] with environment variables set.
    pub fn start_redis_with_env(
        home: &Path,
        url: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Router {
        let queue = vec!["--redis".to_owned(), url.to_owned()];
        Router::spawn(home, queue, "127.0.0.1:0", extra, vars)
    }

    fn spawn(
        data: &Path,
        queue: Vec<String>,
        listen: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Router {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
            .env_clear()
            .envs(vars.iter().copied())
            .env("CHAT_HOME", data)
            .env("RUST_LOG", "debug")
            .args(["router", "--listen", listen])
            .args(&queue)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(data.with_extension("log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("start the router");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the router's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Router {
            child,
            addr,
            data: data.to_path_buf(),
            queue,
        }
    }

    /// Sends the router process `signal` (a name `kill` takes: `HUP`...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// What the router logged so far (it logs at debug level to a file
    /// beside its data directory).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    /// Kills the process at once (no graceful shutdown) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait for the router");
        assert!(exit.success(), "router exited with {exit:?}");
    }

    /// The router's WebSocket URL, for clients.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Kills the router and starts a new one on the same address and data
    /// directory, as a restart in the middle of a conversation.
    pub fn restart_same_port(self) -> Router {
        self.restart_same_port_with(&[])
    }

    /// [`Router::restart_same_port`] with other arguments.
    pub fn restart_same_port_with(self, extra: &[&str]) -> Router {
        let (data, addr, queue) = (self.data.clone(), self.addr.clone(), self.queue.clone());
        self.kill();
        Router::spawn(&data, queue, &addr, extra, &[])
    }

    /// Starts a new router on the same queue.
    pub fn restart(self, extra: &[&str]) -> Router {
        let (data, queue) = (self.data.clone(), self.queue.clone());
        self.kill();
        Router::spawn(&data, queue, "127.0.0.1:0", extra, &[])
    }

    /// `GET path` on the router: the status line and the body.
    pub fn get(&self, path: &str) -> (String, String) {
        use std::io::{Read as _, Write as _};
        let mut tcp = std::net::TcpStream::connect(&self.addr).expect("connect to the router");
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        tcp.write_all(head.as_bytes()).expect("send the request");
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).expect("read the answer");
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, body.to_owned())
    }

    /// The value of the metric `name` (a line `name value`) in `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw WebSocket to the router.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `/ws?pub=KEY` without authenticating.
pub async fn connect_raw(addr: &str, key: &PublicKey) -> Socket {
    let text = key.to_base64();
    let key = percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC);
    let url = format!("ws://{addr}/ws?pub={key}");
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket connect");
    ws
}

/// An `auth` answering `nonce` as `id`'s `device` at the router on `addr`.
pub fn auth(id: &Identity, nonce: &[u8; 32], addr: &str, device: &Uuid) -> Frame {
    let router = protocol::router_name(&format!("ws://{addr}/ws")).expect("a router address");
    let who = protocol::AuthFor {
        device,
        name: "test",
        router: &router,
    };
    Frame::Auth(protocol::sign_challenge(id, protocol::VERSION, nonce, who))
}

/// Next data frame on `ws`, parsed; panics when the socket closes.
pub async fn next_frame(ws: &mut Socket) -> Frame {
    loop {
        let msg = tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("the router sent nothing")
            .expect("the socket closed")
            .expect("socket error");
        match msg {
            Message::Text(text) => return protocol::parse(text.as_str()).expect("a valid frame"),
            Message::Close(c) => panic!("closed by the router: {c:?}"),
            _ => {}
        }
    }
}

/// Reads until the router closes; returns its close frame and any frames
/// it sent before.
pub async fn until_close(ws: &mut Socket) -> (Option<CloseFrame>, Vec<Frame>) {
    let mut frames = Vec::new();
    loop {
        let msg = tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("the router neither sent nor closed");
        match msg {
            Some(Ok(Message::Text(text))) => {
                frames.push(protocol::parse(text.as_str()).expect("a valid frame"))
            }
            Some(Ok(Message::Close(c))) => return (c, frames),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (None, frames),
        }
    }
}

/// Sends one text frame.
pub async fn send_text(ws: &mut Socket, text: &str) {
    ws.send(Message::text(text.to_owned())).await.expect("send");
}

/// Sends one frame.
pub async fn send_frame(ws: &mut Socket, frame: &Frame) {
    send_text(ws, &protocol::to_text(frame)).await;
}

/// The challenge's nonce.
pub async fn read_challenge(ws: &mut Socket) -> [u8; 32] {
    match next_frame(ws).await {
        Frame::Challenge(c) => {
            assert!(c.versions.contains(&protocol::VERSION));
            c.nonce
        }
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// The device a [`Client`] of `id` is unless told otherwise: derived from
/// the key, so connecting again is the same device (as a profile is).
pub fn default_device(id: &Identity) -> Uuid {
    let key = id.public_key();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&key.as_bytes()[..16]);
    Uuid::from_bytes(bytes)
}

/// The same identity again (another device of it holds the same key).
pub fn twin(id: &Identity) -> Identity {
    Identity::from_secret_bytes(&id.secret_bytes())
}

/// An authenticated client.
pub struct Client {
    /// Its identity.
    pub id: Identity,
    /// Its device ([`protocol::CONTROL_DEVICE`] for a control session).
    pub device: Uuid,
    /// Its socket.
    pub ws: Socket,
    /// How many `synced` frames the router sent (one per session).
    pub synced: u32,
}

impl Client {
    /// Connects and authenticates as `id`, on its default device.
    pub async fn connect(addr: &str, id: Identity) -> Client {
        let device = default_device(&id);
        Client::connect_device(addr, id, device).await
    }

    /// Connects and authenticates as `device` of `id`.
    pub async fn connect_device(addr: &str, id: Identity, device: Uuid) -> Client {
        match Client::try_connect(addr, id, device).await {
            Ok(client) => client,
            Err((close, frames)) => panic!("refused: {close:?} after {frames:?}"),
        }
    }

    /// Connects as `device` of `id`: the client, or the router's close
    /// frame and what it sent before when it refused the session.
    pub async fn try_connect(
        addr: &str,
        id: Identity,
        device: Uuid,
    ) -> Result<Client, (Option<CloseFrame>, Vec<Frame>)> {
        let mut ws = connect_raw(addr, &id.public_key()).await;
        let nonce = read_challenge(&mut ws).await;
        send_frame(&mut ws, &auth(&id, &nonce, addr, &device)).await;
        let msg = tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("the router sent nothing");
        match msg {
            Some(Ok(Message::Text(text))) => match protocol::parse(text.as_str()) {
                Ok(Frame::Ready(r)) => {
                    assert_eq!(r.key, id.public_key());
                    Ok(Client {
                        id,
                        device,
                        ws,
                        synced: 0,
                    })
                }
                Ok(first) => {
                    let (close, mut frames) = until_close(&mut ws).await;
                    frames.insert(0, first);
                    Err((close, frames))
                }
                Err(e) => panic!("not a frame: {e}"),
            },
            Some(Ok(Message::Close(c))) => Err((c, Vec::new())),
            other => panic!("expected ready or a refusal, got {other:?}"),
        }
    }

    /// A control session of `id`: receives nothing, replaces nothing.
    pub async fn control(addr: &str, id: Identity) -> Client {
        Client::connect_device(addr, id, protocol::CONTROL_DEVICE).await
    }

    /// This client's key.
    pub fn key(&self) -> PublicKey {
        self.id.public_key()
    }

    /// Seals a text message to `to`.
    pub fn seal(&self, to: &PublicKey, body: &str) -> MessageFrame {
        protocol::seal(
            &self.id,
            to,
            Uuid::now_v7(),
            &chat_p2p::clock::now(),
            &Content::text(body),
        )
        .expect("seal")
    }

    /// Sends a sealed text to `to` and returns it (without waiting).
    pub async fn send(&mut self, to: &PublicKey, body: &str) -> MessageFrame {
        let m = self.seal(to, body);
        send_frame(&mut self.ws, &Frame::Message(m.clone())).await;
        m
    }

    /// Sends a text to `to` and waits for the router's ack.
    pub async fn send_acked(&mut self, to: &PublicKey, body: &str) -> MessageFrame {
        let m = self.send(to, body).await;
        self.expect_ack(m.id).await;
        m
    }

    /// Waits for the router's ack of `id`.
    pub async fn expect_ack(&mut self, id: Uuid) -> String {
        match self.next().await {
            Frame::Ack(a) if a.id == id => a.at.expect("router acks carry 'at'"),
            other => panic!("expected ack of {id}, got {other:?}"),
        }
    }

    /// Waits for an error frame and returns it.
    pub async fn expect_error(&mut self) -> protocol::ErrorFrame {
        match self.next().await {
            Frame::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Next frame, noting (not returning) the router's `synced`.
    pub async fn next(&mut self) -> Frame {
        loop {
            match next_frame(&mut self.ws).await {
                Frame::Synced => self.synced += 1,
                frame => return frame,
            }
        }
    }

    /// The next frame, or nothing if it is the router's `synced`.
    pub async fn until_synced_or_one(&mut self) -> Vec<Frame> {
        match next_frame(&mut self.ws).await {
            Frame::Synced => {
                self.synced += 1;
                Vec::new()
            }
            frame => vec![frame],
        }
    }

    /// Reads frames until the router says the backlog is delivered;
    /// returns the frames before it.
    pub async fn until_synced(&mut self) -> Vec<Frame> {
        let mut before = Vec::new();
        while self.synced == 0 {
            match next_frame(&mut self.ws).await {
                Frame::Synced => self.synced += 1,
                frame => before.push(frame),
            }
        }
        before
    }

    /// Waits for a delivered message, opens it, and returns it with its
    /// text (without acking).
    pub async fn receive(&mut self) -> (MessageFrame, String) {
        match self.next().await {
            Frame::Message(m) => match protocol::open(&self.id, &m).expect("open") {
                Content::Text { body, .. } => (m, body),
                other => panic!("expected text, got {other:?}"),
            },
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Acknowledges a delivered message.
    pub async fn ack(&mut self, id: Uuid) {
        send_frame(&mut self.ws, &Frame::Ack(protocol::Ack { id, at: None })).await;
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
