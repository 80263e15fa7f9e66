//! STOMP frames parsed in place: a frame is index ranges into the read
//! buffer, so nothing is copied or allocated per message.

/// Index of the first byte `b` in `hay`, eight bytes at a time (the "has a
/// zero byte" trick on little-endian words: the lowest flag is a true match).
pub fn find_byte(hay: &[u8], b: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    let pattern = LO.wrapping_mul(b as u64);
    let mut i = 0;
    while i + 8 <= hay.len() {
        let w = u64::from_le_bytes(hay[i..i + 8].try_into().unwrap()) ^ pattern;
        let zero = w.wrapping_sub(LO) & !w & (LO << 7);
        if zero != 0 {
            return Some(i + (zero.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    hay[i..].iter().position(|&c| c == b).map(|p| i + p)
}

/// A complete frame. `head` runs from the newline ending the command line to
/// the newline of the last header, so every header line follows a '\n'.
#[derive(Clone, Copy)]
pub struct Frame {
    pub cmd: (usize, usize),
    pub head: (usize, usize),
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The frame at `buf[*pos..]`, moving `*pos` past it; None while incomplete
/// (`*pos` then only skips heart-beat EOLs). The body is `content-length`
/// bytes when that header is there, else up to the NUL. CRLF lines are fine.
pub fn parse(buf: &[u8], pos: &mut usize) -> Option<Frame> {
    let mut p = *pos;
    while p < buf.len() && (buf[p] == b'\n' || buf[p] == b'\r') {
        p += 1;
    }
    *pos = p;
    let cmd_end = p + find_byte(&buf[p..], b'\n')?;
    let (mut line, mut length) = (cmd_end + 1, None);
    let body = loop {
        let end = line + find_byte(&buf[line..], b'\n')?;
        let text = strip_cr(&buf[line..end]);
        if text.is_empty() {
            break end + 1;
        }
        if let (None, Some(v)) = (length, text.strip_prefix(b"content-length:")) {
            length = parse_u64(v).map(|n| n as usize);
        }
        line = end + 1;
    };
    let stop = match length {
        Some(n) if buf.len() > body + n => body + n,
        Some(_) => return None,
        None => body + find_byte(&buf[body..], 0)?,
    };
    *pos = stop + 1;
    Some(Frame { cmd: (p, cmd_end), head: (cmd_end, line) })
}

pub fn command<'a>(buf: &'a [u8], f: &Frame) -> &'a [u8] {
    strip_cr(&buf[f.cmd.0..f.cmd.1])
}

/// The first value of header `name`, raw (no unescaping, as loadgen's `header`).
pub fn header<'a>(buf: &'a [u8], f: &Frame, name: &[u8]) -> Option<&'a [u8]> {
    let head = &buf[f.head.0..f.head.1];
    let mut i = 0;
    while let Some(nl) = find_byte(&head[i..], b'\n') {
        i += nl + 1;
        let rest = &head[i..];
        if rest.len() > name.len() && rest.starts_with(name) && rest[name.len()] == b':' {
            let value = &rest[name.len() + 1..];
            return Some(strip_cr(&value[..find_byte(value, b'\n').unwrap_or(value.len())]));
        }
    }
    None
}

/// A decimal number; None unless `s` is 1 to 19 digits.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let digits = !s.is_empty() && s.len() < 20 && s.iter().all(u8::is_ascii_digit);
    digits.then(|| s.iter().fold(0, |n, &c| n * 10 + (c - b'0') as u64))
}

/// Append `v` in decimal, without allocating.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let (mut digits, mut i) = ([0u8; 20], 20);
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bytes() {
        for n in 0..40 {
            let mut v = vec![b'a'; n];
            v.extend_from_slice(b"\n\x00\n");
            assert_eq!((find_byte(&v, b'\n'), find_byte(&v, 0)), (Some(n), Some(n + 1)));
            assert_eq!(find_byte(&v, b'z'), None);
        }
    }

    #[test]
    fn parses_frames_split_anywhere() {
        let stream = b"\n\r\nMESSAGE\r\nseq:7\r\ncontent-length:3\r\n\r\na\0b\0\nRECEIPT\nreceipt-id:x\n\n\0";
        for cut in 0..stream.len() {
            let (mut buf, mut pos, mut got) = (stream[..cut].to_vec(), 0, vec![]);
            for round in 0..2 {
                if round == 1 {
                    buf.extend_from_slice(&stream[cut..]);
                }
                while let Some(f) = parse(&buf, &mut pos) {
                    if command(&buf, &f) == b"MESSAGE" {
                        assert_eq!(header(&buf, &f, b"seq"), Some(&b"7"[..]));
                        assert_eq!(header(&buf, &f, b"se"), None);
                    }
                    got.push(command(&buf, &f).to_vec());
                }
            }
            assert_eq!(got, [b"MESSAGE".to_vec(), b"RECEIPT".to_vec()], "cut {cut}");
            assert_eq!(pos, buf.len());
        }
    }
}
