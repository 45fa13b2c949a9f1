//! RESP requests in, replies out.
//!
//! [`parse_request`] takes one request off the front of a connection's read buffer, the
//! way Redis's `processMultibulkBuffer` and `processInlineBuffer` read them: a multibulk
//! (`*<n>\r\n` then n × `$<len>\r\n<bytes>\r\n`) or an inline command (one line, split
//! like `sdssplitargs`). It keeps no state between calls: an incomplete request is
//! scanned again when more bytes arrived, which costs a walk over its headers but never
//! a copy of its payloads. Lengths are read digit by digit and refused as soon as no
//! continuation could bring them within [`RequestLimits`] (`*3000000000` is an error
//! before its `\r\n` arrives), so the only bytes that may wait in the buffer for long are
//! a bulk's payload, bounded by `max_bulk_bytes`, and an inline line, bounded by
//! `max_inline_bytes`.
//!
//! [`Reply::write`] appends a reply to the write buffer in RESP2 or RESP3, formatting
//! numbers on the stack.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Limits a connection's requests are held to.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// The longest bulk argument (Redis's `proto-max-bulk-len`).
    pub max_bulk_bytes: usize,
    /// The most arguments of a multibulk request, the command name included.
    pub max_args: usize,
    /// The longest inline command line, before its `\n` (Redis's `PROTO_INLINE_MAX_SIZE`).
    pub max_inline_bytes: usize,
}

impl Default for RequestLimits {
    /// Redis's own: 512 MiB bulk arguments, 1,048,576 arguments, 64 KiB inline lines.
    fn default() -> Self {
        RequestLimits {
            max_bulk_bytes: 512 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_inline_bytes: 64 * 1024,
        }
    }
}

/// A request that can never become valid, however it continues: the connection answers
/// [`ProtocolError::reply`] and closes, as Redis does. The texts are Redis's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A multibulk count that is not a number, or above `max_args`.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A bulk length that is not a number, negative, or above `max_bulk_bytes`.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A multibulk argument that does not start with `$`.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.got))]
    ExpectedBulk { got: u8 },
    /// A bulk's bytes not followed by `\r\n` (Redis skips those two bytes unread).
    #[error("Protocol error: bulk data not followed by CRLF")]
    MissingBulkCrlf,
    /// An inline line with no `\n` within `max_inline_bytes`.
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    /// An inline quote left open, or closed and followed by something other than a space.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

impl ProtocolError {
    /// The error reply Redis sends before closing the connection, e.g.
    /// `-ERR Protocol error: invalid bulk length`.
    pub fn reply(&self) -> Reply {
        Reply::Error(format!("ERR {self}").into())
    }
}

/// Takes one complete request off the front of `buf`: its arguments (command name first).
///
/// `Ok(None)`: no complete request yet; the incomplete one is left in `buf` (call again
/// when more bytes arrived). Empty requests (`*0\r\n`, any negative count such as
/// `*-1\r\n`, a blank inline line) are consumed and skipped, as Redis does. Arguments are
/// zero-copy `Bytes` slices split off `buf` (an inline argument with quotes is the one
/// exception: its escapes make new bytes). On an error the offending request is left in
/// `buf`, so calling again gives the same error.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    loop {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let parsed = if first == b'*' {
            parse_multibulk(buf, limits)?
        } else {
            parse_inline(buf, limits)?
        };
        match parsed {
            Parsed::Incomplete => return Ok(None),
            Parsed::Empty => continue,
            Parsed::Request(args) => return Ok(Some(args)),
        }
    }
}

/// What one attempt at the front of the buffer found.
enum Parsed {
    Incomplete,
    /// An empty request, consumed.
    Empty,
    Request(Vec<Bytes>),
}

fn parse_multibulk(buf: &mut BytesMut, limits: &RequestLimits) -> Result<Parsed, ProtocolError> {
    // A first walk only checks and measures, so nothing is allocated for a request that
    // is still arriving; the second slices the arguments off the frozen bytes.
    let Some((count, end)) = scan_multibulk(buf, limits, |_, _| {})? else {
        return Ok(Parsed::Incomplete);
    };
    let request = buf.split_to(end).freeze();
    if count == 0 {
        return Ok(Parsed::Empty);
    }
    // Every argument is in the buffer, so the count is bounded by the bytes received.
    let mut args = Vec::with_capacity(count);
    scan_multibulk(&request, limits, |start, end| {
        args.push(request.slice(start..end))
    })?;
    Ok(Parsed::Request(args))
}

/// Walks the multibulk at the front of `buf`, calling `arg` with each argument's range.
/// `Ok(Some((count, end)))`: complete, `end` bytes long.
fn scan_multibulk(
    buf: &[u8],
    limits: &RequestLimits,
    mut arg: impl FnMut(usize, usize),
) -> Result<Option<(usize, usize)>, ProtocolError> {
    // Redis refuses counts above INT_MAX whatever its other limits.
    let max_args = limits.max_args.min(i32::MAX as usize);
    let Some((count, mut at)) = header_number(buf, 1, max_args, true)
        .map_err(|Invalid| ProtocolError::InvalidMultibulkLength)?
    else {
        return Ok(None);
    };
    for _ in 0..count {
        let Some(&kind) = buf.get(at) else {
            return Ok(None);
        };
        if kind != b'$' {
            return Err(ProtocolError::ExpectedBulk { got: kind });
        }
        let Some((len, start)) = header_number(buf, at + 1, limits.max_bulk_bytes, false)
            .map_err(|Invalid| ProtocolError::InvalidBulkLength)?
        else {
            return Ok(None);
        };
        // `start <= buf.len()`, and `len` may be as large as the limit allows.
        let available = buf.len() - start;
        if available < 2 || available - 2 < len {
            return Ok(None);
        }
        let end = start + len;
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::MissingBulkCrlf);
        }
        arg(start, end);
        at = end + 2;
    }
    Ok(Some((count, at)))
}

/// A header number no continuation can make valid.
struct Invalid;

/// Reads the number of a header line (`<digits>\r\n`) from `buf[at..]`, as Redis's
/// `string2ll` reads it: an optional `-`, then `0` alone or digits without a leading
/// zero, nothing else. `Ok(None)`: the line is not all there yet. Refused as soon as the
/// bytes so far cannot start a valid number, or one above `max`, so a header line never
/// waits in the buffer longer than 23 bytes (`$`, `-`, 19 digits, `\r\n`).
///
/// A negative number, allowed only where `negative_ok` (a multibulk count, which Redis
/// reads as an empty request when it is not positive), reads as 0. Returns the number
/// and where the line ends (after its `\r\n`).
fn header_number(
    buf: &[u8],
    at: usize,
    max: usize,
    negative_ok: bool,
) -> Result<Option<(usize, usize)>, Invalid> {
    let negative = buf.get(at) == Some(&b'-');
    if negative && !negative_ok {
        return Err(Invalid);
    }
    let digits = if negative { at + 1 } else { at };
    // Whatever the limits, the number must fit an i64 as in Redis.
    let limit = if negative {
        1 << 63
    } else {
        (max as u64).min(i64::MAX as u64)
    };
    let mut value: u64 = 0;
    let mut i = digits;
    loop {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        match byte {
            b'0'..=b'9' => {
                // "0" only alone: no "01", "00" or "-0".
                if (i > digits && value == 0) || (negative && i == digits && byte == b'0') {
                    return Err(Invalid);
                }
                value = value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(byte - b'0')))
                    .filter(|v| *v <= limit)
                    .ok_or(Invalid)?;
                i += 1;
            }
            b'\r' if i > digits => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') if negative => Ok(Some((0, i + 2))),
                    // `value <= max`, a usize.
                    Some(b'\n') => Ok(Some((value as usize, i + 2))),
                    Some(_) => Err(Invalid),
                };
            }
            _ => return Err(Invalid),
        }
    }
}

fn parse_inline(buf: &mut BytesMut, limits: &RequestLimits) -> Result<Parsed, ProtocolError> {
    let window = &buf[..buf.len().min(limits.max_inline_bytes.saturating_add(1))];
    let Some(newline) = window.iter().position(|b| *b == b'\n') else {
        return if buf.len() > limits.max_inline_bytes {
            Err(ProtocolError::TooBigInline)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line_end = if newline > 0 && buf[newline - 1] == b'\r' {
        newline - 1
    } else {
        newline
    };
    // Split before consuming, so that an error leaves the buffer as it was.
    let pieces = split_args(&buf[..line_end])?;
    let line = buf.split_to(newline + 1).freeze();
    if pieces.is_empty() {
        return Ok(Parsed::Empty);
    }
    let args = pieces
        .into_iter()
        .map(|piece| match piece {
            Piece::Span(start, end) => line.slice(start..end),
            Piece::Quoted(bytes) => Bytes::from(bytes),
        })
        .collect();
    Ok(Parsed::Request(args))
}

/// One inline argument: a span of the line as it is, or the bytes of a quoted one.
enum Piece {
    Span(usize, usize),
    Quoted(Vec<u8>),
}

/// C's `isspace`, which `sdssplitargs` skips between arguments and wants after a quote.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Splits an inline line as Redis's `sdssplitargs` does: arguments are separated by
/// blanks; an unquoted argument ends at a space, tab, `\r` or `\n`; a quote starts a
/// quoted part that ends the argument, and must be followed by a blank or the end.
/// "Double quotes" take `\n \r \t \b \a`, `\xHH` and `\<any>` for that byte; 'single
/// quotes' only `\'`. (A NUL byte is an ordinary byte here; C's string functions make
/// Redis stop reading the line at one.)
fn split_args(line: &[u8]) -> Result<Vec<Piece>, ProtocolError> {
    let mut pieces = Vec::new();
    let mut p = 0;
    loop {
        while p < line.len() && is_space(line[p]) {
            p += 1;
        }
        if p == line.len() {
            return Ok(pieces);
        }
        let start = p;
        while p < line.len() && !matches!(line[p], b' ' | b'\t' | b'\r' | b'\n' | b'"' | b'\'') {
            p += 1;
        }
        let quote = match line.get(p) {
            Some(&quote @ (b'"' | b'\'')) => quote,
            _ => {
                pieces.push(Piece::Span(start, p));
                continue;
            }
        };
        let mut arg = line[start..p].to_vec();
        p += 1;
        loop {
            let Some(&byte) = line.get(p) else {
                return Err(ProtocolError::UnbalancedQuotes);
            };
            let next = line.get(p + 1).copied();
            if byte == quote {
                if next.is_some_and(|next| !is_space(next)) {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                p += 1;
                break;
            }
            match (quote, byte, next) {
                (b'"', b'\\', Some(b'x')) => {
                    let hex = (line.get(p + 2).copied().and_then(hex_digit))
                        .zip(line.get(p + 3).copied().and_then(hex_digit));
                    if let Some((high, low)) = hex {
                        arg.push((high << 4) | low);
                        p += 4;
                    } else {
                        arg.push(b'x');
                        p += 2;
                    }
                }
                (b'"', b'\\', Some(escaped)) => {
                    arg.push(match escaped {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    p += 2;
                }
                (b'\'', b'\\', Some(b'\'')) => {
                    arg.push(b'\'');
                    p += 2;
                }
                _ => {
                    arg.push(byte);
                    p += 1;
                }
            }
        }
        pieces.push(Piece::Quoted(arg));
    }
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).map(|d| d as u8)
}

/// The protocol version a connection speaks (`HELLO 3` switches to RESP3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    Resp2,
    Resp3,
}

/// What a command answers, written in the connection's protocol version.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`
    Ok,
    /// `+text`; a `\r` or `\n` in it is written as a space.
    Simple(Cow<'static, str>),
    /// `-text`, the full text after `-`, e.g. `ERR unknown command 'foo'` or
    /// `MOVED 3999 127.0.0.1:6381`; a `\r` or `\n` in it is written as a space.
    Error(Cow<'static, str>),
    /// `:n`
    Integer(i64),
    /// `$len` and the bytes.
    Bulk(Bytes),
    /// RESP2 `$-1`, RESP3 `_`.
    Nil,
    /// RESP2 `*-1`, RESP3 `_`.
    NilArray,
    /// `*n` and the items.
    Array(Vec<Reply>),
    /// RESP3 `,text`, RESP2 a bulk string of the same text: Redis's text for a double
    /// (`1.5`, `3`, `1e+300`, `inf`, `-inf`, `nan`).
    Double(f64),
    /// RESP3 `#t`/`#f`, RESP2 `:1`/`:0`.
    Bool(bool),
    /// RESP3 `%n` and the pairs, RESP2 a flat array of 2n.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `~n`, RESP2 an array.
    Set(Vec<Reply>),
    /// (format, text), e.g. ("txt", ...): RESP3 `=len\r\ntxt:text`, RESP2 a bulk string of
    /// the text. A format that is not 3 bytes long is written as `txt`.
    Verbatim(Cow<'static, str>, String),
}

impl Reply {
    /// Appends the reply to `out` as `version` writes it.
    pub fn write(&self, version: ProtocolVersion, out: &mut BytesMut) {
        let resp3 = version == ProtocolVersion::Resp3;
        match self {
            Reply::Ok => out.extend_from_slice(b"+OK\r\n"),
            Reply::Simple(text) => write_line(out, b'+', text),
            Reply::Error(text) => write_line(out, b'-', text),
            Reply::Integer(n) => write_header(out, b':', *n),
            Reply::Bulk(data) => write_bulk(out, data),
            Reply::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => write_items(out, b'*', items, version),
            Reply::Double(d) => {
                let text = DoubleText::new(*d);
                if resp3 {
                    out.put_u8(b',');
                    out.extend_from_slice(text.as_bytes());
                    out.extend_from_slice(b"\r\n");
                } else {
                    write_bulk(out, text.as_bytes());
                }
            }
            Reply::Bool(b) => out.extend_from_slice(match (resp3, b) {
                (true, true) => b"#t\r\n",
                (true, false) => b"#f\r\n",
                (false, true) => b":1\r\n",
                (false, false) => b":0\r\n",
            }),
            Reply::Map(pairs) => {
                if resp3 {
                    write_header(out, b'%', pairs.len());
                } else {
                    write_header(out, b'*', pairs.len() * 2);
                }
                for (key, value) in pairs {
                    key.write(version, out);
                    value.write(version, out);
                }
            }
            Reply::Set(items) => write_items(out, if resp3 { b'~' } else { b'*' }, items, version),
            Reply::Verbatim(format, text) if resp3 => {
                let format = if format.len() == 3 { format } else { "txt" };
                write_header(out, b'=', text.len() + 4);
                out.extend_from_slice(format.as_bytes());
                out.put_u8(b':');
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Verbatim(_, text) => write_bulk(out, text.as_bytes()),
        }
    }
}

/// `kind`, the number, `\r\n`.
fn write_header(out: &mut BytesMut, kind: u8, n: impl itoa::Integer) {
    out.put_u8(kind);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_bulk(out: &mut BytesMut, data: &[u8]) {
    write_header(out, b'$', data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A simple string or error line, line breaks in `text` made spaces (as Redis's
/// `addReplyErrorLength` callers and `addReplyStatus` users are told to ensure).
fn write_line(out: &mut BytesMut, kind: u8, text: &str) {
    out.put_u8(kind);
    let start = out.len();
    out.extend_from_slice(text.as_bytes());
    for byte in &mut out[start..] {
        if matches!(*byte, b'\r' | b'\n') {
            *byte = b' ';
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn write_items(out: &mut BytesMut, kind: u8, items: &[Reply], version: ProtocolVersion) {
    write_header(out, kind, items.len());
    for item in items {
        item.write(version, out);
    }
}

/// A double as Redis's `d2string` writes it, on the stack: `nan`, `inf`, `-inf`, `0`,
/// `-0`; an integral value within ±2^62 as an integer; anything else as `fpconv_dtoa`
/// does, the shortest digits that read back to the same double (Rust's, where Redis uses
/// Grisu2, which agrees but for rare cases where Grisu2 is not shortest), plain when the
/// exponent is small and `d.ddde±x` otherwise (`0.001`, `1.5`, `1e-7`, `1e+300`).
struct DoubleText {
    bytes: [u8; 32],
    len: usize,
}

impl DoubleText {
    fn new(d: f64) -> Self {
        let mut text = DoubleText {
            bytes: [0; 32],
            len: 0,
        };
        if d.is_nan() {
            text.push(b"nan");
        } else if d.is_infinite() {
            text.push(if d < 0.0 { b"-inf" } else { b"inf" });
        } else if d == 0.0 {
            text.push(if d.is_sign_negative() { b"-0" } else { b"0" });
        } else if d.trunc() == d && d.abs() <= (i64::MAX / 2) as f64 {
            text.push(itoa::Buffer::new().format(d as i64).as_bytes());
        } else {
            text.push_shortest(d);
        }
        text
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn push_zeros(&mut self, n: usize) {
        self.bytes[self.len..self.len + n].fill(b'0');
        self.len += n;
    }

    /// `fpconv_dtoa`'s layout of the shortest digits of a finite, non-zero `d`.
    fn push_shortest(&mut self, d: f64) {
        // Rust's `{:e}` gives the shortest digits that round-trip: "1.2345e-7", "5e300".
        let mut scientific = DoubleText {
            bytes: [0; 32],
            len: 0,
        };
        fmt::write(&mut scientific, format_args!("{:e}", d.abs()))
            .expect("a double's {:e} fits 32 bytes");
        let text = scientific.as_bytes();
        let e = text
            .iter()
            .position(|b| *b == b'e')
            .expect("{:e} has an exponent");
        let mut digits = [0u8; 20];
        let mut ndigits = 0;
        for &b in text[..e].iter().filter(|b| b.is_ascii_digit()) {
            digits[ndigits] = b;
            ndigits += 1;
        }
        let digits = &digits[..ndigits];
        let exponent: i32 = std::str::from_utf8(&text[e + 1..])
            .ok()
            .and_then(|exponent| exponent.parse().ok())
            .expect("{:e} has a decimal exponent");
        let ndigits = ndigits as i32;
        // The value is digits × 10^k.
        let k = exponent - (ndigits - 1);
        let magnitude = (k + ndigits - 1).unsigned_abs() as i32;

        if d < 0.0 {
            self.push(b"-");
        }
        if k >= 0 && magnitude < ndigits + 7 {
            self.push(digits);
            self.push_zeros(k as usize);
        } else if k < 0 && (k > -7 || magnitude < 4) {
            let point = ndigits + k;
            if point <= 0 {
                self.push(b"0.");
                self.push_zeros((-point) as usize);
                self.push(digits);
            } else {
                self.push(&digits[..point as usize]);
                self.push(b".");
                self.push(&digits[point as usize..]);
            }
        } else {
            self.push(&digits[..1]);
            if digits.len() > 1 {
                self.push(b".");
                self.push(&digits[1..]);
            }
            self.push(if k + ndigits - 1 < 0 { b"e-" } else { b"e+" });
            self.push(itoa::Buffer::new().format(magnitude).as_bytes());
        }
    }
}

impl fmt::Write for DoubleText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        if bytes.len() > self.bytes.len() - self.len {
            return Err(fmt::Error);
        }
        self.push(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What parsing a whole input gives: every request, then the error or the bytes left.
    type Outcome = (Vec<Vec<Bytes>>, Result<Vec<u8>, ProtocolError>);

    fn drain(
        buf: &mut BytesMut,
        limits: &RequestLimits,
        requests: &mut Vec<Vec<Bytes>>,
    ) -> Result<(), ProtocolError> {
        while let Some(args) = parse_request(buf, limits)? {
            requests.push(args);
        }
        Ok(())
    }

    /// Feeds `input` in the pieces cut at `cuts`, taking requests off after each piece.
    fn parse_in_pieces(input: &[u8], cuts: &[usize], limits: &RequestLimits) -> Outcome {
        let mut buf = BytesMut::new();
        let mut requests = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain([&input.len()]) {
            buf.extend_from_slice(&input[from..to]);
            from = to;
            if let Err(error) = drain(&mut buf, limits, &mut requests) {
                // An error is final: the rest of the input changes nothing.
                buf.extend_from_slice(&input[from..]);
                assert_eq!(parse_request(&mut buf, limits), Err(error.clone()));
                return (requests, Err(error));
            }
        }
        (requests, Ok(buf.to_vec()))
    }

    fn parse_all(input: &[u8]) -> Outcome {
        parse_in_pieces(input, &[], &RequestLimits::default())
    }

    fn args(list: &[&[u8]]) -> Vec<Bytes> {
        list.iter().map(|a| Bytes::copy_from_slice(a)).collect()
    }

    /// A request as clients send it: a multibulk of bulk strings.
    fn encode(args: &[Bytes]) -> BytesMut {
        let mut out = BytesMut::new();
        Reply::Array(args.iter().cloned().map(Reply::Bulk).collect())
            .write(ProtocolVersion::Resp2, &mut out);
        out
    }

    fn error_of(input: &[u8]) -> ProtocolError {
        parse_all(input).1.expect_err("a protocol error")
    }

    fn small_limits() -> RequestLimits {
        RequestLimits {
            max_bulk_bytes: 5,
            max_args: 2,
            max_inline_bytes: 8,
        }
    }

    #[test]
    fn default_limits_are_redis_defaults() {
        let limits = RequestLimits::default();
        assert_eq!(limits.max_bulk_bytes, 536_870_912);
        assert_eq!(limits.max_args, 1_048_576);
        assert_eq!(limits.max_inline_bytes, 65_536);
    }

    #[test]
    fn a_multibulk_comes_off_the_front_and_the_rest_stays() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n*1\r\n$4\r\nPI"[..]);
        let got = parse_request(&mut buf, &RequestLimits::default()).unwrap();
        assert_eq!(got, Some(args(&[b"GET", b"key"])));
        assert_eq!(&buf[..], b"*1\r\n$4\r\nPI");
        assert_eq!(parse_request(&mut buf, &RequestLimits::default()), Ok(None));
        assert_eq!(
            &buf[..],
            b"*1\r\n$4\r\nPI",
            "nothing consumed while incomplete"
        );
    }

    #[test]
    fn arguments_are_slices_of_the_read_buffer() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nGET other\r\n"[..]);
        let base = buf.as_ptr() as usize;
        let got = parse_request(&mut buf, &RequestLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(got[0].as_ptr() as usize, base + 8);
        assert_eq!(got[1].as_ptr() as usize, base + 17);
        let got = parse_request(&mut buf, &RequestLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(got, args(&[b"GET", b"other"]));
        assert_eq!(got[1].as_ptr() as usize, base + 26);
    }

    #[test]
    fn requests_round_trip() {
        let cases: Vec<Vec<Bytes>> = vec![
            args(&[b"PING"]),
            args(&[b"SET", b"key", b"value"]),
            args(&[b"SET", b"", b"\r\n", b"$3\r\n*1\r\n"]),
            args(&[b"SET", &[0, 255, 13, 10, 0], &vec![b'x'; 70_000]]),
        ];
        for case in cases {
            let mut buf = encode(&case);
            assert_eq!(
                parse_request(&mut buf, &RequestLimits::default()),
                Ok(Some(case))
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn pipelined_requests_come_out_in_order_and_empty_ones_are_skipped() {
        let mut input = encode(&args(&[b"SET", b"a", b"1"]));
        input.extend_from_slice(b"*0\r\n*-1\r\nGET a\r\n\r\n   \n*-70\r\nPING\n");
        input.extend_from_slice(&encode(&args(&[b"DEL", b"a"])));
        input.extend_from_slice(b"*2\r\n$3\r\nGET");
        let (requests, rest) = parse_all(&input);
        assert_eq!(
            requests,
            vec![
                args(&[b"SET", b"a", b"1"]),
                args(&[b"GET", b"a"]),
                args(&[b"PING"]),
                args(&[b"DEL", b"a"]),
            ]
        );
        assert_eq!(rest.unwrap(), b"*2\r\n$3\r\nGET");
        // Only empty requests: all consumed, none returned.
        assert_eq!(parse_all(b"*0\r\n\r\n*-1\r\n"), (vec![], Ok(vec![])));
    }

    /// Inputs for the split tests: pipelines, partial frames and each kind of error.
    fn split_corpus() -> Vec<Vec<u8>> {
        let mut pipeline = encode(&args(&[b"SET", b"key", b"a\r\nvalue"]));
        pipeline.extend_from_slice(b"*0\r\nGET \"k\\x65y\" 'x y'\r\n\r\n");
        pipeline.extend_from_slice(&encode(&args(&[b"MGET", b"a", b"", b"c"])));
        pipeline.extend_from_slice(b"*1\r\n$4\r\nPI");
        [
            &pipeline[..],
            b"*1\r\n$4\r\nPING\r\nPING\r\n*3000000000\r\n",
            b"*1\r\n$4\r\nPING\r\n*1\r\n$600000000\r\n",
            b"*2\r\n$3\r\nGET\r\n:1\r\n",
            b"*1\r\n$3\r\nGETXY",
            b"*1\r\n$-1\r\n",
            b"*01\r\n",
            b"SET a \"b\"c\r\n",
            b"ECHO 'unbalanced\r\n",
        ]
        .iter()
        .map(|input| input.to_vec())
        .collect()
    }

    #[test]
    fn every_split_gives_the_same_result() {
        for input in split_corpus() {
            let whole = parse_all(&input);
            let bytewise: Vec<usize> = (1..input.len()).collect();
            assert_eq!(
                parse_in_pieces(&input, &bytewise, &RequestLimits::default()),
                whole,
                "byte by byte: {:?}",
                String::from_utf8_lossy(&input)
            );
            for cut in 0..=input.len() {
                assert_eq!(
                    parse_in_pieces(&input, &[cut], &RequestLimits::default()),
                    whole,
                    "cut at {cut}: {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }

    #[test]
    fn errors_have_redis_texts() {
        let cases: &[(&[u8], &str)] = &[
            (b"*abc\r\n", "Protocol error: invalid multibulk length"),
            (b"*-0\r\n", "Protocol error: invalid multibulk length"),
            (b"*01\r\n", "Protocol error: invalid multibulk length"),
            (b"*\r\n", "Protocol error: invalid multibulk length"),
            (b"*1\rX", "Protocol error: invalid multibulk length"),
            (b"*1 \r\n", "Protocol error: invalid multibulk length"),
            (
                b"*-9223372036854775809\r\n",
                "Protocol error: invalid multibulk length",
            ),
            (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$abc\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$\r\n", "Protocol error: invalid bulk length"),
            (
                b"*1\r\n$03\r\nfoo\r\n",
                "Protocol error: invalid bulk length",
            ),
            (b"*1\r\nx\r\n", "Protocol error: expected '$', got 'x'"),
            (
                b"*2\r\n$3\r\nGET\r\n:1\r\n",
                "Protocol error: expected '$', got ':'",
            ),
            (
                b"*1\r\n$3\r\nfooXY",
                "Protocol error: bulk data not followed by CRLF",
            ),
            (
                b"*1\r\n$3\r\nfoo\rX",
                "Protocol error: bulk data not followed by CRLF",
            ),
            (
                b"ECHO \"abc\r\n",
                "Protocol error: unbalanced quotes in request",
            ),
            (
                b"ECHO \"ab\"cd\r\n",
                "Protocol error: unbalanced quotes in request",
            ),
            (
                b"ECHO 'ab\r\n",
                "Protocol error: unbalanced quotes in request",
            ),
            (
                b"ECHO 'ab'c\r\n",
                "Protocol error: unbalanced quotes in request",
            ),
            (
                b"ECHO \"ab\\\"\r\n",
                "Protocol error: unbalanced quotes in request",
            ),
            (&[b'a'; 65_537], "Protocol error: too big inline request"),
        ];
        for (input, text) in cases {
            assert_eq!(
                error_of(input).to_string(),
                *text,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut out = BytesMut::new();
        ProtocolError::InvalidBulkLength
            .reply()
            .write(ProtocolVersion::Resp2, &mut out);
        assert_eq!(&out[..], b"-ERR Protocol error: invalid bulk length\r\n");
    }

    #[test]
    fn an_error_leaves_the_request_in_the_buffer() {
        let mut buf = BytesMut::from(&b"*0\r\n*1\r\n$-1\r\n"[..]);
        let limits = RequestLimits::default();
        assert_eq!(
            parse_request(&mut buf, &limits),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            &buf[..],
            b"*1\r\n$-1\r\n",
            "the empty request before it was consumed"
        );
        assert_eq!(
            parse_request(&mut buf, &limits),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    #[test]
    fn limits_are_refused_at_the_header() {
        let limits = RequestLimits::default();
        let refused: &[(&[u8], ProtocolError)] = &[
            (b"*3000000000\r\n", ProtocolError::InvalidMultibulkLength),
            // Before the line is complete: no continuation can make it valid.
            (b"*3000000000", ProtocolError::InvalidMultibulkLength),
            (b"*1048577", ProtocolError::InvalidMultibulkLength),
            (
                b"*99999999999999999999999999",
                ProtocolError::InvalidMultibulkLength,
            ),
            (b"*1\r\n$600000000\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$536870913", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$4000000000\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$-", ProtocolError::InvalidBulkLength),
            (b"*1\r\nx", ProtocolError::ExpectedBulk { got: b'x' }),
        ];
        for (input, error) in refused {
            let mut buf = BytesMut::from(*input);
            assert_eq!(
                parse_request(&mut buf, &limits),
                Err(error.clone()),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // At the limits, a request is merely incomplete.
        for input in [
            &b"*1048576\r\n"[..],
            b"*1\r\n$536870912\r\n",
            b"*1\r\n$536870912",
            b"*104857",
        ] {
            let mut buf = BytesMut::from(input);
            assert_eq!(parse_request(&mut buf, &limits), Ok(None));
        }

        let small = small_limits();
        let mut buf = BytesMut::from(&b"*3\r\n"[..]);
        assert_eq!(
            parse_request(&mut buf, &small),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        let mut buf = BytesMut::from(&b"*2\r\n$6"[..]);
        assert_eq!(
            parse_request(&mut buf, &small),
            Err(ProtocolError::InvalidBulkLength)
        );
        let mut buf = BytesMut::from(&b"*2\r\n$5\r\nhello\r\n$0\r\n\r\n"[..]);
        assert_eq!(
            parse_request(&mut buf, &small),
            Ok(Some(args(&[b"hello", b""])))
        );
    }

    #[test]
    fn an_inline_line_is_held_to_its_limit() {
        let limits = RequestLimits::default();
        let mut line = vec![b'a'; 65_536];
        let mut buf = BytesMut::from(&line[..]);
        assert_eq!(
            parse_request(&mut buf, &limits),
            Ok(None),
            "64 KiB without a newline may still end"
        );
        line.push(b'\n');
        let mut buf = BytesMut::from(&line[..]);
        assert_eq!(
            parse_request(&mut buf, &limits).unwrap().unwrap()[0].len(),
            65_536
        );
        // A newline past the limit is too late, however the bytes arrived.
        line.insert(0, b'a');
        let mut buf = BytesMut::from(&line[..]);
        assert_eq!(
            parse_request(&mut buf, &limits),
            Err(ProtocolError::TooBigInline)
        );

        let small = small_limits();
        assert_eq!(
            parse_in_pieces(b"GET abcd\r\n", &[], &small).1,
            Err(ProtocolError::TooBigInline)
        );
        assert_eq!(
            parse_in_pieces(b"GET abc\r\n", &[], &small).0,
            vec![args(&[b"GET", b"abc"])]
        );
    }

    #[test]
    fn inline_commands_split_like_redis() {
        let cases: &[(&[u8], &[&[u8]])] = &[
            (b"PING\r\n", &[b"PING"]),
            (b"PING\n", &[b"PING"]),
            (b"SET a b\r\n", &[b"SET", b"a", b"b"]),
            (
                b"  set   key\t\"hello world\"  \r\n",
                &[b"set", b"key", b"hello world"],
            ),
            // sdssplitargs's own example.
            (
                b"foo bar \"newline are supported\\n\" and \"\\xff\\x00otherstuff\"\r\n",
                &[
                    b"foo",
                    b"bar",
                    b"newline are supported\n",
                    b"and",
                    b"\xff\x00otherstuff",
                ],
            ),
            // Each checked against redis-server 7.0 with RPUSH and LRANGE.
            (
                b"RPUSH k \"a\\x41b\" 'it\\'s' \"q\\\"u\"\r\n",
                &[b"RPUSH", b"k", b"aAb", b"it's", b"q\"u"],
            ),
            (
                b"ECHO \"\\n\\r\\t\\b\\a\\\\\"\r\n",
                &[b"ECHO", b"\n\r\t\x08\x07\\"],
            ),
            (b"ECHO foo\"bar baz\"\r\n", &[b"ECHO", b"foobar baz"]),
            (b"ECHO \x0b\x0cx\r\n", &[b"ECHO", b"x"]),
            (b"ECHO a\x0bb\r\n", &[b"ECHO", b"a\x0bb"]),
            (b"ECHO 'a\\b' 'a\\nb'\r\n", &[b"ECHO", b"a\\b", b"a\\nb"]),
            (b"ECHO \"\\xZZ\" \"\\x4\"\r\n", &[b"ECHO", b"xZZ", b"x4"]),
            (b"ECHO \"\"\r\n", &[b"ECHO", b""]),
            (b"ECHO a\rb\r\n", &[b"ECHO", b"a", b"b"]),
            (b"ECHO \"a b\"\t'c d'\r\n", &[b"ECHO", b"a b", b"c d"]),
        ];
        for (input, expected) in cases {
            let (requests, rest) = parse_all(input);
            assert_eq!(
                requests,
                vec![args(expected)],
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(rest, Ok(vec![]));
        }
    }

    fn written(reply: &Reply, version: ProtocolVersion) -> Vec<u8> {
        let mut out = BytesMut::new();
        reply.write(version, &mut out);
        out.to_vec()
    }

    #[test]
    fn every_reply_in_resp2_and_resp3() {
        let cow = |s: &'static str| Cow::Borrowed(s);
        let cases: Vec<(Reply, &[u8], &[u8])> = vec![
            (Reply::Ok, b"+OK\r\n", b"+OK\r\n"),
            (Reply::Simple(cow("PONG")), b"+PONG\r\n", b"+PONG\r\n"),
            (
                Reply::Error(cow("ERR unknown command 'foo'")),
                b"-ERR unknown command 'foo'\r\n",
                b"-ERR unknown command 'foo'\r\n",
            ),
            (
                Reply::Error(cow("MOVED 3999 127.0.0.1:6381")),
                b"-MOVED 3999 127.0.0.1:6381\r\n",
                b"-MOVED 3999 127.0.0.1:6381\r\n",
            ),
            (Reply::Integer(0), b":0\r\n", b":0\r\n"),
            (Reply::Integer(-42), b":-42\r\n", b":-42\r\n"),
            (
                Reply::Integer(i64::MIN),
                b":-9223372036854775808\r\n",
                b":-9223372036854775808\r\n",
            ),
            (
                Reply::Bulk(Bytes::from_static(b"hello")),
                b"$5\r\nhello\r\n",
                b"$5\r\nhello\r\n",
            ),
            (Reply::Bulk(Bytes::new()), b"$0\r\n\r\n", b"$0\r\n\r\n"),
            (Reply::Nil, b"$-1\r\n", b"_\r\n"),
            (Reply::NilArray, b"*-1\r\n", b"_\r\n"),
            (Reply::Array(vec![]), b"*0\r\n", b"*0\r\n"),
            (
                Reply::Array(vec![
                    Reply::Integer(1),
                    Reply::Bulk(Bytes::from_static(b"a")),
                    Reply::Nil,
                ]),
                b"*3\r\n:1\r\n$1\r\na\r\n$-1\r\n",
                b"*3\r\n:1\r\n$1\r\na\r\n_\r\n",
            ),
            (Reply::Double(1.5), b"$3\r\n1.5\r\n", b",1.5\r\n"),
            (Reply::Double(f64::INFINITY), b"$3\r\ninf\r\n", b",inf\r\n"),
            (
                Reply::Double(f64::NEG_INFINITY),
                b"$4\r\n-inf\r\n",
                b",-inf\r\n",
            ),
            (Reply::Double(f64::NAN), b"$3\r\nnan\r\n", b",nan\r\n"),
            (Reply::Bool(true), b":1\r\n", b"#t\r\n"),
            (Reply::Bool(false), b":0\r\n", b"#f\r\n"),
            (
                Reply::Map(vec![
                    (Reply::Simple(cow("a")), Reply::Integer(1)),
                    (Reply::Bulk(Bytes::from_static(b"b")), Reply::Bool(false)),
                ]),
                b"*4\r\n+a\r\n:1\r\n$1\r\nb\r\n:0\r\n",
                b"%2\r\n+a\r\n:1\r\n$1\r\nb\r\n#f\r\n",
            ),
            (Reply::Map(vec![]), b"*0\r\n", b"%0\r\n"),
            (
                Reply::Set(vec![
                    Reply::Bulk(Bytes::from_static(b"x")),
                    Reply::Double(2.0),
                ]),
                b"*2\r\n$1\r\nx\r\n$1\r\n2\r\n",
                b"~2\r\n$1\r\nx\r\n,2\r\n",
            ),
            (
                Reply::Verbatim(cow("txt"), "Some string".into()),
                b"$11\r\nSome string\r\n",
                b"=15\r\ntxt:Some string\r\n",
            ),
            (
                Reply::Verbatim(cow("mkd"), "# x\r\n".into()),
                b"$5\r\n# x\r\n\r\n",
                b"=9\r\nmkd:# x\r\n\r\n",
            ),
            (
                Reply::Verbatim(cow("markdown"), "x".into()),
                b"$1\r\nx\r\n",
                b"=5\r\ntxt:x\r\n",
            ),
        ];
        for (reply, resp2, resp3) in &cases {
            assert_eq!(
                written(reply, ProtocolVersion::Resp2),
                *resp2,
                "{reply:?} in RESP2"
            );
            assert_eq!(
                written(reply, ProtocolVersion::Resp3),
                *resp3,
                "{reply:?} in RESP3"
            );
        }
    }

    #[test]
    fn line_breaks_in_simple_strings_and_errors_become_spaces() {
        let reply = Reply::Simple("two\r\nlines\n".into());
        assert_eq!(written(&reply, ProtocolVersion::Resp3), b"+two  lines \r\n");
        let reply = Reply::Error("ERR bad\rthing".into());
        assert_eq!(
            written(&reply, ProtocolVersion::Resp2),
            b"-ERR bad thing\r\n"
        );
    }

    fn double_text(d: f64) -> String {
        String::from_utf8(DoubleText::new(d).as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn doubles_read_as_redis_writes_them() {
        // Redis 7.2+ (d2string with fpconv_dtoa); 7.0 still wrote %.17g.
        let cases: &[(f64, &str)] = &[
            (1.5, "1.5"),
            (3.0, "3"),
            (-3.0, "-3"),
            (0.1, "0.1"),
            (0.3, "0.3"),
            (100.5, "100.5"),
            (123.456, "123.456"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1e-6, "0.000001"),
            (0.00012, "0.00012"),
            (1.25e-6, "1.25e-6"),
            (1e-7, "1e-7"),
            (1.5e-10, "1.5e-10"),
            (1234567.125, "1234567.125"),
            (123456789.0, "123456789"),
            (4611686018427387904.0, "4611686018427387904"),
            (9223372036854775808.0, "9223372036854776000"),
            (1e21, "1e+21"),
            (1e300, "1e+300"),
            (-1e300, "-1e+300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (-5e-324, "-5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ];
        for (d, text) in cases {
            assert_eq!(double_text(*d), *text, "{d:e}");
        }
    }

    /// An argument as redis-cli prints it (sdscatrepr): quoted, escaped.
    fn repr(arg: &[u8]) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &byte in arg {
            match byte {
                b'\\' | b'"' => out.extend_from_slice(&[b'\\', byte]),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x07 => out.extend_from_slice(b"\\a"),
                0x08 => out.extend_from_slice(b"\\b"),
                b' '..=b'~' => out.push(byte),
                _ => out.extend_from_slice(format!("\\x{byte:02x}").as_bytes()),
            }
        }
        out.push(b'"');
        out
    }

    fn some_args() -> impl Strategy<Value = Vec<Bytes>> {
        prop::collection::vec(
            prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from),
            1..6,
        )
    }

    proptest! {
        #[test]
        fn any_encoded_multibulk_parses_back_under_any_split(
            first in some_args(),
            second in some_args(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut input = encode(&first);
            input.extend_from_slice(&encode(&second));
            let cut = cut.index(input.len() + 1);
            let outcome = parse_in_pieces(&input, &[cut], &RequestLimits::default());
            prop_assert_eq!(outcome, (vec![first, second], Ok(vec![])));
        }

        #[test]
        fn any_quoted_inline_command_parses_back(args in some_args(), cut in any::<prop::sample::Index>()) {
            let mut input: Vec<u8> = args.iter().map(|a| repr(a)).collect::<Vec<_>>().join(&b' ');
            input.extend_from_slice(b"\r\n");
            let cut = cut.index(input.len() + 1);
            let outcome = parse_in_pieces(&input, &[cut], &RequestLimits::default());
            prop_assert_eq!(outcome, (vec![args], Ok(vec![])));
        }

        #[test]
        fn any_double_reads_back(bits in any::<u64>()) {
            let d = f64::from_bits(bits);
            let text = double_text(d);
            let back: f64 = text.parse().unwrap();
            prop_assert!(back.to_bits() == d.to_bits() || (d.is_nan() && back.is_nan()), "{} for {:e}", text, d);
        }
    }
}
