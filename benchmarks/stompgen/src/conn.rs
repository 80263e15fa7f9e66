//! A byte stream to the broker: raw TCP, or STOMP frames in WebSocket
//! messages (RFC 6455 client side, no extensions). Incoming STOMP bytes land
//! in one growable buffer that frames are parsed from in place.

use crate::frame::{self, Frame};
use crate::Opts;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Reads go into buffers of this size, with at least MIN_ROOM free.
const READ_BUF: usize = 256 * 1024;
const MIN_ROOM: usize = 64 * 1024;
/// The longest a read blocks before its caller looks at its clocks again.
const POLL: Duration = Duration::from_millis(50);

/// A random seed for `ws_end`'s masking keys (xorshift: cheap, not secret).
pub fn seed() -> u64 {
    let mut b = [0u8; 8];
    crate::urandom(&mut b);
    u64::from_ne_bytes(b) | 1
}

/// Start a frame at the end of `buf`; over WebSocket, leave room for the
/// longest head (10 bytes and the 4-byte mask). Returns where it starts.
pub fn ws_begin(buf: &mut Vec<u8>, ws: bool) -> usize {
    let mark = buf.len();
    if ws {
        buf.extend_from_slice(&[0; 14]);
    }
    mark
}

/// Make what was appended since `mark` one final masked frame (`opcode`),
/// moving the payload left when its head is shorter than the room left.
pub fn ws_end(buf: &mut Vec<u8>, mark: usize, ws: bool, opcode: u8, rng: &mut u64) {
    if !ws {
        return;
    }
    let n = buf.len() - mark - 14;
    let (code, hl) = if n < 126 { (n, 2) } else if n < 65536 { (126, 4) } else { (127, 10) };
    let start = mark + hl + 4;
    buf.copy_within(mark + 14.., start);
    buf.truncate(start + n);
    buf[mark] = 0x80 | opcode;
    buf[mark + 1] = 0x80 | code as u8;
    let len = (n as u64).to_be_bytes();
    buf[mark + 2..mark + hl].copy_from_slice(&len[8 - (hl - 2)..]);
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let key = (*rng as u32).to_ne_bytes();
    buf[mark + hl..start].copy_from_slice(&key);
    // XOR with the key repeated, 8 bytes at a time.
    let wide = u64::from_ne_bytes([key, key].concat().try_into().unwrap());
    let mut chunks = buf[start..].chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&(u64::from_ne_bytes((&*c).try_into().unwrap()) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Room for `n` more bytes at `buf[*len..]`: drop consumed bytes (before
/// `*pos`) first, grow only when that is not enough.
fn reserve(buf: &mut Vec<u8>, pos: &mut usize, len: &mut usize, n: usize) {
    if *pos == *len {
        (*pos, *len) = (0, 0);
    }
    if buf.len() - *len < n && *pos > 0 {
        buf.copy_within(*pos..*len, 0);
        (*len, *pos) = (*len - *pos, 0);
    }
    if buf.len() - *len < n {
        buf.resize((*len + n).max(buf.len() * 2), 0);
    }
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let v = c.iter().enumerate().fold(0u32, |v, (i, &b)| v | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= c.len() { ABC[(v >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

pub struct Conn {
    sock: TcpStream,
    pub ws: bool,
    /// WebSocket: the upgrade is done, `raw` holds frames (else the HTTP answer).
    upgraded: bool,
    rng: u64,
    raw: Vec<u8>,
    raw_pos: usize,
    raw_len: usize,
    /// STOMP bytes: frames are parsed from `data[pos..len]`.
    pub data: Vec<u8>,
    pos: usize,
    len: usize,
    blocking: bool,
}

impl Conn {
    /// A connection to `--port` whose CONNECT the broker has answered with CONNECTED.
    pub fn open(o: &Opts, deadline: Instant) -> Result<Conn, String> {
        Conn::open_at(o, o.port, deadline)
    }

    /// As [`Conn::open`], to `port` (`--consumer-port` for consumers).
    pub fn open_at(o: &Opts, port: u16, deadline: Instant) -> Result<Conn, String> {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let addr = SocketAddr::new(o.ip, port);
        let sock = TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(10)))
            .map_err(|e| format!("connect: {e}"))?;
        // Writes wait at most until the deadline (the broker may apply flow control).
        (sock.set_nodelay(true).and(sock.set_write_timeout(Some(left))))
            .and(sock.set_read_timeout(Some(POLL)))
            .map_err(|e| e.to_string())?;
        let raw = if o.ws { vec![0; READ_BUF] } else { Vec::new() };
        let (data, rng) = (vec![0; READ_BUF], seed());
        let mut c = Conn { sock, ws: o.ws, upgraded: false, rng, raw, raw_pos: 0, raw_len: 0, data, pos: 0, len: 0, blocking: true };
        if o.ws {
            let mut key = [0u8; 16];
            crate::urandom(&mut key);
            let host = if o.ip.is_ipv6() { format!("[{}]", o.ip) } else { o.ip.to_string() };
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\n",
                o.ws_path, port, base64(&key)
            );
            c.write(request.as_bytes())?;
            let end = loop {
                if let Some(end) = c.raw[..c.raw_len].windows(4).position(|w| w == b"\r\n\r\n") {
                    break end;
                }
                if Instant::now() > deadline {
                    return Err("deadline (WebSocket handshake)".into());
                }
                c.fill(true)?;
            };
            if !c.raw.starts_with(b"HTTP/1.1 101") {
                let head = String::from_utf8_lossy(&c.raw[..end.min(200)]).into_owned();
                return Err(format!("WebSocket handshake refused: {head:?}"));
            }
            (c.raw_pos, c.upgraded) = (end + 4, true);
            c.decode_ws()?;
        }
        // CONNECT's defaults, each overridden in place or followed by --header (dict.update).
        let mut headers = vec![("accept-version", "1.2"), ("host", "localhost"), ("heart-beat", "0,0")];
        for (name, value) in &o.headers {
            match headers.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value,
                None => headers.push((name, value)),
            }
        }
        let lines: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
        c.send(&format!("CONNECT\n{lines}\n\0"))?;
        let f = c.next_frame(deadline)?;
        if c.command(&f) != b"CONNECTED" {
            return Err(format!("CONNECT refused: {}", c.describe(&f)));
        }
        Ok(c)
    }

    /// Write one whole frame given as text (a WebSocket frame of its own).
    pub fn send(&mut self, frame: &str) -> Result<(), String> {
        let mut out = Vec::with_capacity(frame.len() + 14);
        let mark = ws_begin(&mut out, self.ws && self.upgraded);
        out.extend_from_slice(frame.as_bytes());
        ws_end(&mut out, mark, self.ws && self.upgraded, 1, &mut self.rng);
        self.write(&out)
    }

    /// Write all of `bytes`, blocking (until the deadline: the write timeout).
    /// On failure, the broker's ERROR frame if one arrives soon explains it.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let err = match self.write_raw(bytes) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        for _ in 0..4 {
            while let Some(f) = self.parse() {
                if self.command(&f) == b"ERROR" {
                    return Err(format!("{err}; broker said: {}", self.describe(&f)));
                }
            }
            if self.fill(true).is_err() {
                break;
            }
        }
        Err(err)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.set_blocking(true)?;
        self.sock.write_all(bytes).map_err(|e| match would_block(&e) {
            true => "deadline (the broker stopped reading)".to_string(),
            false => format!("write: {e}"),
        })
    }

    fn set_blocking(&mut self, block: bool) -> Result<(), String> {
        if block != self.blocking {
            self.sock.set_nonblocking(!block).map_err(|e| e.to_string())?;
            self.blocking = block;
        }
        Ok(())
    }

    /// One read, waiting up to POLL if `block`, else not at all; Ok(false)
    /// when nothing came. Over WebSocket, complete frames are decoded into
    /// the STOMP buffer (pings answered); a close or EOF is an error.
    pub fn fill(&mut self, block: bool) -> Result<bool, String> {
        self.set_blocking(block)?;
        let (buf, pos, len) = match self.ws {
            true => (&mut self.raw, &mut self.raw_pos, &mut self.raw_len),
            false => (&mut self.data, &mut self.pos, &mut self.len),
        };
        reserve(buf, pos, len, MIN_ROOM);
        match self.sock.read(&mut buf[*len..]) {
            Ok(0) => return Err("the broker closed the connection".into()),
            Ok(n) => *len += n,
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) => return Err(format!("read: {e}")),
        }
        if self.upgraded {
            self.decode_ws()?;
        }
        Ok(true)
    }

    fn decode_ws(&mut self) -> Result<(), String> {
        loop {
            let avail = &self.raw[self.raw_pos..self.raw_len];
            let (b0, b1) = match avail {
                [b0, b1, ..] if b1 & 0x80 != 0 => return Err(format!("masked frame {b0:#x} from the server")),
                [b0, b1, ..] => (*b0, *b1),
                _ => return Ok(()),
            };
            let hl = [2, 4, 10][usize::from(b1 & 0x7F >= 126) + usize::from(b1 & 0x7F == 127)];
            if avail.len() < hl {
                return Ok(());
            }
            let n = match hl {
                2 => (b1 & 0x7F) as usize,
                _ => avail[2..hl].iter().fold(0, |n, &b| n << 8 | b as usize),
            };
            if avail.len() < hl + n {
                return Ok(());
            }
            let payload = self.raw_pos + hl..self.raw_pos + hl + n;
            self.raw_pos += hl + n;
            match b0 & 0x0F {
                0..=2 => {
                    reserve(&mut self.data, &mut self.pos, &mut self.len, n);
                    self.data[self.len..self.len + n].copy_from_slice(&self.raw[payload]);
                    self.len += n;
                }
                9 => {
                    let mut pong = Vec::new();
                    let mark = ws_begin(&mut pong, true);
                    pong.extend_from_slice(&self.raw[payload]);
                    ws_end(&mut pong, mark, true, 10, &mut self.rng);
                    self.write_raw(&pong)?;
                }
                8 => return Err("the broker closed the WebSocket".into()),
                _ => {}
            }
        }
    }

    /// The next complete frame already read, if any: its ranges index
    /// `self.data` and stay valid until the next `fill`.
    #[inline]
    pub fn parse(&mut self) -> Option<Frame> {
        frame::parse(&self.data[..self.len], &mut self.pos)
    }

    /// The next frame, reading (blocking) until the deadline.
    pub fn next_frame(&mut self, deadline: Instant) -> Result<Frame, String> {
        loop {
            if let Some(f) = self.parse() {
                return Ok(f);
            }
            if Instant::now() > deadline {
                return Err("deadline".into());
            }
            self.fill(true)?;
        }
    }

    pub fn command(&self, f: &Frame) -> &[u8] {
        frame::command(&self.data, f)
    }

    /// "COMMAND message" (an ERROR frame's `message` header) for reports.
    pub fn describe(&self, f: &Frame) -> String {
        let message = frame::header(&self.data, f, b"message").unwrap_or(b"");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        format!("{} {}", text(self.command(f)), text(message))
    }

    /// DISCONNECT and wait for its receipt (the broker has read all we sent).
    /// Only an ERROR in reply is an error (a closed connection is not, as in loadgen).
    pub fn disconnect(&mut self, deadline: Instant) -> Result<(), String> {
        self.send("DISCONNECT\nreceipt:bye\n\n\0")?;
        match self.next_frame(deadline) {
            Ok(f) if self.command(&f) == b"ERROR" => Err(format!("got {}", self.describe(&f))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_base64() {
        assert_eq!(base64(b"any carnal pleas"), "YW55IGNhcm5hbCBwbGVhcw==");
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn frames_and_masks() {
        let mut rng = seed();
        for n in [0usize, 5, 125, 126, 300, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let mut buf = b"xy".to_vec();
            let mark = ws_begin(&mut buf, true);
            buf.extend_from_slice(&payload);
            ws_end(&mut buf, mark, true, 1, &mut rng);
            assert_eq!(buf[2], 0x81);
            let (len, hl) = match buf[3] & 0x7F {
                126 => (u16::from_be_bytes([buf[4], buf[5]]) as usize, 4),
                127 => (u64::from_be_bytes(buf[4..12].try_into().unwrap()) as usize, 10),
                l => (l as usize, 2),
            };
            let key = buf[2 + hl..2 + hl + 4].to_vec();
            let body: Vec<u8> = buf[2 + hl + 4..].iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            assert_eq!((len, body), (n, payload));
        }
    }
}
