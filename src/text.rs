//! Text files as administrators' tools write them: UTF-8 with or without a byte order
//! mark, and UTF-16 (LE or BE) with one, the encodings PowerShell writes (`Export-Csv`,
//! `ConvertTo-Json | Out-File`, `>`). Read by `mailboxes import` and `send`. And values
//! from those files quoted in error messages: never more than a short prefix of one.
//!
//! And [`escape_markup`], the one escaper for text placed in XML or HTML-like markup (the
//! launchd plist, desktop notification bodies).
//!
//! The decoding is written here (a BOM check and `char::decode_utf16`): the three
//! encodings need no general-purpose encoding crate. [`decode`] takes a whole file;
//! [`DecodeReader`] decodes a stream (an export of a million mailboxes is a gigabyte)
//! a chunk at a time, with the same encodings found the same way and the same errors.
//! `encoding_rs_io`, the streaming adapter of `encoding_rs`, was considered for it and
//! left: it replaces invalid text with U+FFFD where an export must be refused with the
//! place of the fault, does not recognise UTF-16 without a byte order mark, and has not
//! had a release in years; the three encodings take a page of code.

use std::borrow::Cow;
use std::io::{self, BufRead, Read};

/// The text encoding a file was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    Utf8,
    Utf8Bom,
    Utf16Le,
    Utf16Be,
}

/// The text of a file, without its byte order mark; UTF-8 is borrowed, not copied
/// (exports run to 100 MB). UTF-16 LE without a mark is recognised by its second byte
/// being zero (ASCII text). The error says what is wrong, for the caller to place.
pub fn decode(bytes: &[u8]) -> Result<(Cow<'_, str>, Encoding), String> {
    let utf16 = |body: &[u8], le: bool| -> Result<String, String> {
        if !body.len().is_multiple_of(2) {
            return Err(ODD_UTF16.into());
        }
        let units = body.chunks_exact(2).map(|c| {
            if le {
                u16::from_le_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        });
        char::decode_utf16(units)
            .collect::<Result<String, _>>()
            .map_err(|e| invalid_utf16(&e))
    };
    let not_utf8 = |e: std::str::Utf8Error| not_utf8(e.valid_up_to() as u64);
    let (encoding, skip) = sniff(bytes);
    let body = &bytes[skip..];
    match encoding {
        Encoding::Utf8 | Encoding::Utf8Bom => std::str::from_utf8(body)
            .map(|s| (Cow::Borrowed(s), encoding))
            .map_err(not_utf8),
        Encoding::Utf16Le => Ok((Cow::Owned(utf16(body, true)?), encoding)),
        Encoding::Utf16Be => Ok((Cow::Owned(utf16(body, false)?), encoding)),
    }
}

/// The encoding the first bytes of a file say (at most three are looked at), and the
/// length of its byte order mark.
fn sniff(head: &[u8]) -> (Encoding, usize) {
    match head {
        [0xEF, 0xBB, 0xBF, ..] => (Encoding::Utf8Bom, 3),
        [0xFF, 0xFE, ..] => (Encoding::Utf16Le, 2),
        [0xFE, 0xFF, ..] => (Encoding::Utf16Be, 2),
        // UTF-16 LE without a byte order mark: ASCII text with every second byte zero.
        [a, 0, ..] if *a != 0 => (Encoding::Utf16Le, 0),
        _ => (Encoding::Utf8, 0),
    }
}

const ODD_UTF16: &str = "UTF-16 text with an odd number of bytes (the file is cut short)";

fn invalid_utf16(e: &std::char::DecodeUtf16Error) -> String {
    format!("invalid UTF-16 text: {e}")
}

/// `byte`: where the first invalid byte is, counted from after the byte order mark.
fn not_utf8(byte: u64) -> String {
    format!("not UTF-8 text (byte {byte}); expected UTF-8, or UTF-16 with a byte order mark")
}

/// Why a [`DecodeReader`] stopped.
#[derive(Debug)]
pub enum DecodeError {
    /// The text is not in the encoding its start says: the message [`decode`] gives for
    /// the same file.
    Text(String),
    /// Reading the source failed.
    Io(io::Error),
}

/// How many bytes a [`DecodeReader`] asks its source for at a time, at least.
pub const CHUNK: usize = 256 * 1024;

/// A reader of the UTF-8 text of a file in any of the [`Encoding`]s, decoded as it is
/// read: its byte order mark is left out, UTF-8 is checked and handed on, UTF-16 is
/// transcoded. The text read and not yet consumed is a `str` ([`DecodeReader::text`]),
/// which serde_json parses faster than bytes (it need not check strings again). The
/// first fault stops it: every later read fails, and [`DecodeReader::finish`] tells what
/// it was, in the words of [`decode`] (which also reports a UTF-16 file of odd length
/// before a bad surrogate in it, so `finish` reads on to the end to tell).
pub struct DecodeReader<R> {
    inner: R,
    encoding: Encoding,
    /// Bytes asked of the source at a time, at least.
    chunk: usize,
    /// Decoded text; `text[pos..]` is not consumed yet. A reader of bytes may leave
    /// `pos` inside a character.
    text: String,
    pos: usize,
    /// UTF-8: bytes read and not decoded yet, the start of a character the read cut;
    /// UTF-16: the bytes of a read.
    raw: Vec<u8>,
    /// UTF-16: an odd byte left over from the last read.
    odd: Option<u8>,
    /// UTF-8: how many bytes were decoded (where a fault in `raw` is); UTF-16: how many
    /// were read after the byte order mark (for the odd-length check).
    done: u64,
    /// UTF-16: a high surrogate waiting for its low half.
    high: Option<u16>,
    eof: bool,
    error: Option<DecodeError>,
}

impl<R: Read> DecodeReader<R> {
    /// Reads the first bytes of `inner` to find its encoding.
    pub fn new(inner: R) -> DecodeReader<R> {
        DecodeReader::with_chunk(inner, CHUNK)
    }

    /// [`DecodeReader::new`], reading `chunk` bytes at a time (at least one; tests cut
    /// the text into small pieces to see every character and token cut).
    pub fn with_chunk(mut inner: R, chunk: usize) -> DecodeReader<R> {
        let mut head = [0u8; 3];
        let mut n = 0;
        let mut error = None;
        while n < head.len() {
            match inner.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(DecodeError::Io(e));
                    break;
                }
            }
        }
        let (encoding, skip) = sniff(&head[..n]);
        let mut r = DecodeReader {
            inner,
            encoding,
            chunk: chunk.max(1),
            text: String::new(),
            pos: 0,
            raw: Vec::new(),
            odd: None,
            done: 0,
            high: None,
            eof: false,
            error,
        };
        let rest = &head[skip.min(n)..n];
        match encoding {
            Encoding::Utf8 | Encoding::Utf8Bom => r.raw.extend_from_slice(rest),
            Encoding::Utf16Le | Encoding::Utf16Be => r.transcode(rest),
        }
        r
    }

    /// The encoding found.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The decoded text read and not yet consumed (whole characters: only for a reader
    /// that consumes whole characters).
    pub fn text(&self) -> &str {
        &self.text[self.pos..]
    }

    /// The same as bytes.
    pub fn buffer(&self) -> &[u8] {
        &self.text.as_bytes()[self.pos..]
    }

    /// Reads more of the source onto the end of the text (at least as much as is
    /// unconsumed, so a long record is read in a number of steps that grows with the
    /// logarithm of its length); returns how many bytes of text were added, 0 at the
    /// end. A fault of the text or the source is an error, then and on every call after.
    pub fn fill_more(&mut self) -> io::Result<usize> {
        loop {
            if let Some(e) = &self.error {
                return Err(stopped(e));
            }
            if self.eof {
                return Ok(0);
            }
            if self.pos > 0 {
                // A reader of bytes may have stopped inside a character.
                let mut cut = self.pos;
                while !self.text.is_char_boundary(cut) {
                    cut -= 1;
                }
                self.text.drain(..cut);
                self.pos -= cut;
            }
            let before = self.text.len();
            let want = self.chunk.max(self.text.len() - self.pos);
            if !matches!(self.encoding, Encoding::Utf8 | Encoding::Utf8Bom) {
                self.raw.clear();
            }
            let old = self.raw.len();
            self.raw.resize(old + want, 0);
            let n = read_some(&mut self.inner, &mut self.raw[old..]);
            self.raw.truncate(old + *n.as_ref().unwrap_or(&0));
            match n {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => {
                    self.error = Some(DecodeError::Io(e));
                    continue;
                }
            }
            match self.encoding {
                Encoding::Utf8 | Encoding::Utf8Bom => self.check_utf8(),
                Encoding::Utf16Le | Encoding::Utf16Be => {
                    let raw = std::mem::take(&mut self.raw);
                    self.transcode(&raw);
                    self.raw = raw;
                }
            }
            if self.text.len() > before {
                return Ok(self.text.len() - before);
            }
        }
    }

    /// Moves the UTF-8 read into the text, up to a character the read cut (all of it at
    /// the end, where a cut character is a fault too).
    fn check_utf8(&mut self) {
        let complete = if self.eof {
            self.raw.len()
        } else {
            complete_utf8(&self.raw)
        };
        match std::str::from_utf8(&self.raw[..complete]) {
            Ok(s) => {
                self.text.push_str(s);
                self.done += complete as u64;
                self.raw.drain(..complete);
            }
            Err(e) => {
                let valid = e.valid_up_to();
                let s = std::str::from_utf8(&self.raw[..valid]).expect("checked as valid");
                self.text.push_str(s);
                self.done += valid as u64;
                self.raw.drain(..valid);
                self.fail_text(not_utf8(self.done));
            }
        }
    }

    /// Transcodes UTF-16 bytes onto the text; `[]` at the end of the source.
    fn transcode(&mut self, bytes: &[u8]) {
        self.done += bytes.len() as u64;
        let le = self.encoding == Encoding::Utf16Le;
        let unit = |a: u8, b: u8| {
            if le {
                u16::from_le_bytes([a, b])
            } else {
                u16::from_be_bytes([a, b])
            }
        };
        let mut rest = bytes;
        if let (Some(a), [b, tail @ ..]) = (self.odd, rest) {
            self.odd = None;
            rest = tail;
            self.push_unit(unit(a, *b));
        }
        let mut pairs = rest.chunks_exact(2);
        for p in &mut pairs {
            if self.error.is_some() {
                return;
            }
            self.push_unit(unit(p[0], p[1]));
        }
        if let [b] = pairs.remainder() {
            self.odd = Some(*b);
        }
        if self.eof && self.error.is_none() {
            if self.odd.is_some() {
                self.fail_text(ODD_UTF16.into());
            } else if let Some(h) = self.high.take() {
                self.fail_surrogate(h);
            }
        }
    }

    fn push_unit(&mut self, u: u16) {
        let c = match (self.high.take(), u) {
            (Some(h), 0xDC00..=0xDFFF) => {
                char::from_u32(0x10000 + ((u32::from(h) - 0xD800) << 10) + (u32::from(u) - 0xDC00))
            }
            (Some(h), _) => return self.fail_surrogate(h),
            (None, 0xD800..=0xDBFF) => {
                self.high = Some(u);
                return;
            }
            (None, 0xDC00..=0xDFFF) => return self.fail_surrogate(u),
            (None, _) => char::from_u32(u32::from(u)),
        };
        self.text.push(c.expect("a scalar value from UTF-16 units"));
    }

    fn fail_surrogate(&mut self, unit: u16) {
        let e = char::decode_utf16([unit])
            .next()
            .and_then(Result::err)
            .expect("a lone surrogate does not decode");
        self.fail_text(invalid_utf16(&e));
    }

    fn fail_text(&mut self, message: String) {
        if self.error.is_none() {
            self.error = Some(DecodeError::Text(message));
        }
    }

    /// Reads the source to its end, decoding it, and returns the first fault, if any:
    /// what to report instead of whatever a reader of the text made of it. Unread text
    /// is discarded.
    pub fn finish(&mut self) -> Option<DecodeError> {
        loop {
            self.pos = self.text.len();
            let surrogate = matches!(&self.error, Some(DecodeError::Text(m)) if m != ODD_UTF16)
                && matches!(self.encoding, Encoding::Utf16Le | Encoding::Utf16Be);
            if self.error.is_some() {
                // A UTF-16 file of odd length is reported as that, before a bad surrogate.
                if surrogate && self.odd_utf16() {
                    self.error = Some(DecodeError::Text(ODD_UTF16.into()));
                }
                break;
            }
            if self.eof {
                break;
            }
            let _ = self.fill_more();
        }
        self.error.take()
    }

    /// After a bad surrogate: whether the UTF-16 text's length is odd (reading the source
    /// to its end). A read error on the way is the fault instead.
    fn odd_utf16(&mut self) -> bool {
        let mut odd = self.done % 2 == 1;
        let mut buf = vec![0; self.chunk];
        loop {
            match read_some(&mut self.inner, &mut buf) {
                Ok(0) => break,
                Ok(n) => odd ^= n % 2 == 1,
                Err(e) => {
                    self.error = Some(DecodeError::Io(e));
                    return false;
                }
            }
        }
        self.eof = true;
        odd
    }
}

/// How much of `bytes` ends with a whole UTF-8 character: all of it, or all but the
/// start of a character cut at the end (what is invalid is left to `str::from_utf8`).
fn complete_utf8(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let b = bytes[len - back];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if need > back { len - back } else { len };
    }
    len
}

/// The error every read returns once a [`DecodeReader`] has stopped.
fn stopped(e: &DecodeError) -> io::Error {
    match e {
        DecodeError::Text(m) => io::Error::new(io::ErrorKind::InvalidData, m.clone()),
        DecodeError::Io(e) => io::Error::new(e.kind(), e.to_string()),
    }
}

/// One read, retried when interrupted.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

impl<R: Read> Read for DecodeReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for DecodeReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.text.len() {
            self.fill_more()?;
        }
        Ok(self.buffer())
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.text.len());
    }
}

/// How many characters of a value an error message quotes.
pub const QUOTE_CHARS: usize = 60;

/// A value quoted for an error message: `` `value` ``, or for a long one its first
/// [`QUOTE_CHARS`] characters, `…` and its length: a 1.6 MB value must not make a 1.6 MB
/// message (or three copies of it).
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_CHARS) {
        None => format!("`{value}`"),
        Some((cut, _)) => format!(
            "`{}…` ({} characters)",
            &value[..cut],
            value.chars().count()
        ),
    }
}

/// Shortens the values quoted in a message it did not write (a parser's, serde's):
/// spans between backticks, or between double quotes with backslash escapes, longer
/// than [`quote`] leaves them are cut as it cuts them; an unclosed span runs to the end.
pub fn shorten_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let delim = rest[open..].chars().next().expect("found");
        out.push_str(&rest[..=open]);
        let inner = &rest[open + 1..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in inner.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if delim == '"' => escaped = true,
                c if c == delim => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let span = &inner[..end.unwrap_or(inner.len())];
        let length = span.chars().count();
        let long = length > QUOTE_CHARS + 1;
        if long {
            let cut = span.char_indices().nth(QUOTE_CHARS).map_or(0, |(i, _)| i);
            out.push_str(&span[..cut]);
            out.push('…');
        } else {
            out.push_str(span);
        }
        if let Some(e) = end {
            out.push(delim);
            rest = &inner[e + delim.len_utf8()..];
        } else {
            rest = "";
        }
        if long {
            out.push_str(&format!(" ({length} characters)"));
        }
    }
    out.push_str(rest);
    out
}

/// Text safe as XML or HTML element content (`&`, `<`, `>`). Quotes stay: element
/// content needs no escaping of them, and a notification server that shows markup as
/// text would show `&quot;` to the person.
pub fn escape_markup(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn markup_escaping_covers_what_ends_or_starts_markup() {
        assert_eq!(
            escape_markup(r#"<b a="x">Tom & 'Jerry'</b>"#),
            r#"&lt;b a="x"&gt;Tom &amp; 'Jerry'&lt;/b&gt;"#
        );
        assert_eq!(escape_markup("plain"), "plain");
    }
    use super::*;

    #[test]
    fn long_values_are_quoted_short() {
        assert_eq!(quote("abc"), "`abc`");
        let exact = "é".repeat(QUOTE_CHARS);
        assert_eq!(quote(&exact), format!("`{exact}`"));
        let long = "é".repeat(1_600_000);
        let q = quote(&long);
        assert_eq!(q, format!("`{}…` (1600000 characters)", "é".repeat(60)));
        // What `quote` made is left alone; what it would cut is cut the same way.
        let msg = format!("expected a GUID, found {q}");
        assert_eq!(shorten_quoted(&msg), msg);
        let raw = format!("unknown field `{long}`, expected `tenant` or \"{long}\" here");
        assert_eq!(
            shorten_quoted(&raw),
            format!(
                "unknown field {q}, expected `tenant` or \"{}…\" (1600000 characters) here",
                "é".repeat(60)
            )
        );
        // Escaped quotes stay inside their span; an unclosed span runs to the end.
        let escaped = format!(
            "string \"{}\\\"{}\", expected f64",
            "a".repeat(40),
            "b".repeat(40)
        );
        assert_eq!(
            shorten_quoted(&escaped),
            format!(
                "string \"{}\\\"{}…\" (82 characters), expected f64",
                "a".repeat(40),
                "b".repeat(18)
            )
        );
        assert_eq!(
            shorten_quoted(&format!("unclosed `{}", "x".repeat(100))),
            format!("unclosed `{}… (100 characters)", "x".repeat(60))
        );
        assert_eq!(
            shorten_quoted("plain, `short` and \"short\""),
            "plain, `short` and \"short\""
        );
    }

    #[test]
    fn every_encoding_powershell_writes() {
        let text = "{\"subject\": \"Grüße 🙂\"}\r\n";
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        for (bytes, encoding) in [
            (text.as_bytes().to_vec(), Encoding::Utf8),
            (
                [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat(),
                Encoding::Utf8Bom,
            ),
            ([&[0xFF, 0xFE][..], &le].concat(), Encoding::Utf16Le),
            ([&[0xFE, 0xFF][..], &be].concat(), Encoding::Utf16Be),
            (le.clone(), Encoding::Utf16Le),
        ] {
            let (decoded, found) = decode(&bytes).unwrap();
            assert_eq!((decoded.as_ref(), found), (text, encoding));
        }
        assert!(decode(b"\xff\xfe\x41").unwrap_err().contains("odd number"));
        assert!(decode(b"\xfe\xff\xd8\x00").unwrap_err().contains("UTF-16"));
        assert!(decode(b"ok \xc3\x28").unwrap_err().contains("byte 3"));
    }

    /// The text a [`DecodeReader`] reading `chunk` bytes at a time hands on, or its fault.
    fn streamed(bytes: &[u8], chunk: usize) -> Result<(String, Encoding), String> {
        let mut r = DecodeReader::with_chunk(bytes, chunk);
        let mut out = Vec::new();
        let read = r.read_to_end(&mut out);
        match r.finish() {
            Some(DecodeError::Text(m)) => Err(m),
            Some(DecodeError::Io(e)) => panic!("{e}"),
            None => {
                read.unwrap();
                Ok((String::from_utf8(out).unwrap(), r.encoding()))
            }
        }
    }

    #[test]
    fn streams_decode_as_whole_files_do() {
        let text = "{\"subject\": \"Grüße 🙂\"}\r\n".repeat(5);
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let mut cases: Vec<Vec<u8>> = vec![
            text.as_bytes().to_vec(),
            [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat(),
            [&[0xFF, 0xFE][..], &le].concat(),
            [&[0xFE, 0xFF][..], &be].concat(),
            le.clone(),
            vec![],
            vec![0xEF],
            vec![0xEF, 0xBB],
            vec![0xEF, 0xBB, 0xBF],
            vec![0xFF],
            vec![0xFF, 0xFE],
            vec![0xFF, 0xFE, 0x41],
            vec![0x41, 0x00],
            vec![0x41, 0x00, 0x42],
            b"ok \xc3\x28".to_vec(),
            b"ok \xc3".to_vec(),
            b"\xf0\x9f\x99".to_vec(),
            [&[0xFE, 0xFF][..], &[0xD8, 0x00, 0x00, 0x41]].concat(),
            [&[0xFE, 0xFF][..], &[0xDC, 0x00]].concat(),
            [&[0xFE, 0xFF][..], &[0x00, 0x41, 0xD8, 0x3D]].concat(),
            [&[0xFE, 0xFF][..], &[0xD8, 0x00, 0x00, 0x41, 0x00]].concat(),
        ];
        // Random bytes that start like each encoding: cut characters, lone surrogates,
        // odd lengths, invalid UTF-8 at every place.
        let mut rng = fastrand::Rng::with_seed(16);
        let pieces: [&[u8]; 10] = [
            b"a",
            b"\x00",
            b"\xc3\xa9",
            b"\xf0\x9f\x99\x82",
            b"\xd8",
            b"\xdc",
            b"\x3d",
            b"\xff",
            b"\xe2\x82",
            b"\n",
        ];
        for start in [
            &b""[..],
            b"\xEF\xBB\xBF",
            b"\xFF\xFE",
            b"\xFE\xFF",
            b"A\x00",
        ] {
            for _ in 0..400 {
                let mut v = start.to_vec();
                for _ in 0..rng.usize(0..16) {
                    v.extend_from_slice(pieces[rng.usize(0..pieces.len())]);
                }
                cases.push(v);
            }
        }
        for bytes in &cases {
            let whole = decode(bytes).map(|(t, e)| (t.into_owned(), e));
            for chunk in [1, 2, 3, 4, 5, 7, CHUNK] {
                assert_eq!(
                    streamed(bytes, chunk),
                    whole,
                    "{bytes:x?} in chunks of {chunk}"
                );
            }
        }
    }

    #[test]
    fn a_failed_source_is_a_read_error() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("the share went away"));
                }
                self.0 -= 1;
                buf[0] = b'x';
                Ok(1)
            }
        }
        for n in [0, 1, 5] {
            let mut r = DecodeReader::with_chunk(Failing(n), 4);
            let mut out = Vec::new();
            assert!(r.read_to_end(&mut out).is_err());
            match r.finish() {
                Some(DecodeError::Io(e)) => assert_eq!(e.to_string(), "the share went away"),
                other => panic!("{other:?}"),
            }
        }
    }
}
