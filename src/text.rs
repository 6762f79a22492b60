//! Text files as administrators' tools write them: UTF-8 with or without a byte order
//! mark, and UTF-16 (LE or BE) with one, the encodings PowerShell writes (`Export-Csv`,
//! `ConvertTo-Json | Out-File`, `>`). Read by `mailboxes import` and `send`. And values
//! from those files quoted in error messages: never more than a short prefix of one.
//!
//! And [`escape_markup`], the one escaper for text placed in XML or HTML-like markup (the
//! launchd plist, desktop notification bodies).
//!
//! The decoding is written here (a BOM check and `char::decode_utf16`): the three
//! encodings need no general-purpose encoding crate.

use std::borrow::Cow;

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
            return Err("UTF-16 text with an odd number of bytes (the file is cut short)".into());
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
            .map_err(|e| format!("invalid UTF-16 text: {e}"))
    };
    let not_utf8 = |e: std::str::Utf8Error| {
        format!(
            "not UTF-8 text (byte {}); expected UTF-8, or UTF-16 with a byte order mark",
            e.valid_up_to()
        )
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => std::str::from_utf8(rest)
            .map(|s| (Cow::Borrowed(s), Encoding::Utf8Bom))
            .map_err(not_utf8),
        [0xFF, 0xFE, rest @ ..] => Ok((Cow::Owned(utf16(rest, true)?), Encoding::Utf16Le)),
        [0xFE, 0xFF, rest @ ..] => Ok((Cow::Owned(utf16(rest, false)?), Encoding::Utf16Be)),
        // UTF-16 LE without a byte order mark: ASCII text with every second byte zero.
        [a, 0, ..] if *a != 0 => Ok((Cow::Owned(utf16(bytes, true)?), Encoding::Utf16Le)),
        _ => std::str::from_utf8(bytes)
            .map(|s| (Cow::Borrowed(s), Encoding::Utf8))
            .map_err(not_utf8),
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
}
