//! Text files as administrators' tools write them: UTF-8 with or without a byte order
//! mark, and UTF-16 (LE or BE) with one, the encodings PowerShell writes (`Export-Csv`,
//! `ConvertTo-Json | Out-File`, `>`). Read by `mailboxes import` and `send`.
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

#[cfg(test)]
mod tests {
    use super::*;

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
