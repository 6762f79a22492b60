//! Reading the PowerShell exports administrators already make: `Get-Mailbox
//! -InactiveMailboxOnly | ConvertTo-Json` (Windows PowerShell 5.1 or PowerShell 7, one
//! object or an array, also the `{"value": [...]}` envelope) and `Export-Csv` (with or
//! without the `#TYPE` line), in UTF-8 with or without BOM or UTF-16 with BOM.
//!
//! An export is read as a stream, never held whole: the text is decoded a chunk at a
//! time ([`DecodeReader`]) and each record is handed on as it is parsed, in batches of
//! [`BATCH`] mailboxes, so reading a gigabyte export takes a few megabytes. Nothing is
//! handed on as final until the end: the caller stages what it gets and applies it only
//! when [`read_export`] returns the export's [`Summary`] (a bad record at the end refuses
//! the whole export, as before).
//!
//! - JSON is read through serde, keeping only the fields the inventory reads, so a full
//!   Get-Mailbox object of two hundred properties costs little more than skipping it.
//!   Each record (and each property of the envelope's or a single record's object) is
//!   parsed by serde_json straight from the decoded text in the buffer (a `str`, whose
//!   strings serde_json need not check again), which is as fast as parsing a file held
//!   in memory; a record the buffer's end cuts is parsed again once more is read. The structure around the records is read by `Json` in
//!   serde_json's steps, so an error reads as serde_json's for the whole file, line and
//!   column included (serde_json's streaming reader, `from_reader`, took 1.6 times as
//!   long and places some errors a column apart). Records parsed on their own get
//!   serde_json's nesting limit of 128 to themselves: a record nested deeper than 126
//!   levels, which ConvertTo-Json cannot write, is read rather than refused.
//! - CSV is read row by row by the csv reader; the text since the current record's start
//!   is kept (a `Window`) to number lines as before and to tell a file cut inside a
//!   quoted cell.
//!
//! Faults are reported as before, and the same one when a file has several: a fault of
//! the file's encoding first (the rest of the file is read to find one), then one of its
//! syntax, then the first bad record (a duplicate ExchangeGuid names both records).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, BufRead, Read};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::config::InventoryConfig;
use crate::inventory::{ExoMailbox, FIELDS, FieldError};
pub use crate::text::Encoding;
use crate::text::{DecodeError, DecodeReader};

/// Mailboxes handed on at a time.
pub const BATCH: usize = 1_000;

/// Why an export could not be read. Nothing is imported when any record is bad.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    // The field error is part of this message, not a cause of its own: `{:#}` would
    // otherwise print it twice.
    #[error("{path}: record {record}{}: {error}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Record {
        path: PathBuf,
        record: usize,
        line: Option<u64>,
        error: FieldError,
    },
}

/// The shape an export was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportShape {
    Json,
    Csv,
}

/// An export read to its end without a fault.
#[derive(Debug)]
pub struct Summary {
    pub shape: ExportShape,
    pub encoding: Encoding,
    /// Mailboxes handed on.
    pub records: usize,
    /// Their ExchangeGuids as 128-bit numbers, sorted (each appears once): what a
    /// snapshot keeps. Sorted, they order as the GUIDs' canonical text does.
    pub identities: Vec<u128>,
}

/// Why [`read_export`] stopped.
#[derive(Debug)]
pub enum ReadError<E> {
    Import(ImportError),
    /// The consumer of the mailboxes refused one of its batches.
    Stopped(E),
}

/// The mailboxes of an export, in file order, read whole ([`parse_export`]).
#[derive(Debug)]
pub struct Export {
    pub shape: ExportShape,
    pub encoding: Encoding,
    pub mailboxes: Vec<ExoMailbox>,
}

/// Reads the export at `path`, handing its mailboxes to `sink` in file order as they are
/// parsed, at most [`BATCH`] at a time (an error of the sink stops the read).
pub fn read_export<E>(
    path: &Path,
    cfg: &InventoryConfig,
    mut sink: impl FnMut(Vec<ExoMailbox>) -> Result<(), E>,
) -> Result<Summary, ReadError<E>> {
    let read_error = |source| {
        ReadError::Import(ImportError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut stopped = None;
    let mut each = |batch| match sink(batch) {
        Ok(()) => true,
        Err(e) => {
            stopped = Some(e);
            false
        }
    };
    let result = parse(file, cfg, &mut each, crate::text::CHUNK);
    if let Some(e) = stopped {
        return Err(ReadError::Stopped(e));
    }
    result.map_err(|f| match f {
        Fail::Io(source) => read_error(source),
        Fail::Parse(p) => ReadError::Import(p.at(path)),
        // Both are reported before this: the sink's error above, the decoder's by parse.
        Fail::Stopped | Fail::Decoder => ReadError::Import(ImportError::Format {
            path: path.to_path_buf(),
            message: "reading was stopped".into(),
        }),
    })
}

/// A parse error before the file's path is attached.
#[derive(Debug)]
pub enum ParseError {
    Format(String),
    Record {
        record: usize,
        line: Option<u64>,
        source: FieldError,
    },
}

impl ParseError {
    fn at(self, path: &Path) -> ImportError {
        let path = path.to_path_buf();
        match self {
            ParseError::Format(message) => ImportError::Format { path, message },
            ParseError::Record {
                record,
                line,
                source,
            } => ImportError::Record {
                path,
                record,
                line,
                error: source,
            },
        }
    }
}

/// Parses export bytes held in memory, collecting the mailboxes (for tests and
/// benchmarks; the import streams with [`read_export`]).
pub fn parse_export(bytes: &[u8], cfg: &InventoryConfig) -> Result<Export, ParseError> {
    let mut mailboxes = Vec::new();
    let mut each = |batch| {
        mailboxes.extend(batch);
        true
    };
    let summary = parse(bytes, cfg, &mut each, crate::text::CHUNK);
    let summary = summary.map_err(|f| match f {
        Fail::Parse(p) => p,
        Fail::Io(e) => ParseError::Format(e.to_string()),
        Fail::Stopped | Fail::Decoder => ParseError::Format("reading was stopped".into()),
    })?;
    Ok(Export {
        shape: summary.shape,
        encoding: summary.encoding,
        mailboxes,
    })
}

/// Why a parse stopped.
#[derive(Debug)]
enum Fail {
    Parse(ParseError),
    /// Reading the file failed.
    Io(io::Error),
    /// The sink said stop.
    Stopped,
    /// The decoder stopped: its fault ([`DecodeReader::finish`]) is the error.
    Decoder,
}

impl From<ParseError> for Fail {
    fn from(e: ParseError) -> Fail {
        Fail::Parse(e)
    }
}

/// Parses the export `input` holds, handing batches to `sink` (false: stop), reading
/// `chunk` bytes at a time.
fn parse<R: Read>(
    input: R,
    cfg: &InventoryConfig,
    sink: &mut dyn FnMut(Vec<ExoMailbox>) -> bool,
    chunk: usize,
) -> Result<Summary, Fail> {
    let wanted = Wanted::new(cfg);
    let mut records = Records::new(cfg, &wanted, sink);
    let mut dec = DecodeReader::with_chunk(input, chunk);
    let encoding = dec.encoding();
    let mut shape = ExportShape::Json;
    let outcome = match skip_whitespace(&mut dec) {
        Err(_) => Err(Fail::Decoder),
        Ok(None) => Err(ParseError::Format("the file is empty".into()).into()),
        Ok(Some('[' | '{')) => Json {
            dec: &mut dec,
            wanted: &wanted,
            line: 1,
            col: 0,
        }
        .document(&mut records),
        Ok(Some(_)) => {
            shape = ExportShape::Csv;
            parse_csv(&mut dec, &wanted, &mut records)
        }
    };
    if matches!(outcome, Err(Fail::Stopped)) || records.stopped {
        return Err(Fail::Stopped);
    }
    // A fault of the file or of its encoding comes first, wherever it is.
    match dec.finish() {
        Some(DecodeError::Io(e)) => return Err(Fail::Io(e)),
        Some(DecodeError::Text(m)) => return Err(ParseError::Format(m).into()),
        None => {}
    }
    match outcome {
        // A reader that failed with the decoder has been told of its fault above.
        Err(Fail::Decoder) => {
            return Err(ParseError::Format("the text could not be read".into()).into());
        }
        other => other?,
    }
    if records.count == 0 {
        return Err(ParseError::Format("the export holds no records".into()).into());
    }
    let identities = records.finish()?;
    Ok(Summary {
        shape,
        encoding,
        records: identities.len(),
        identities,
    })
}

/// Skips whitespace (as `str::trim_start` does: the leading whitespace is not part of
/// the export, and line numbers count from after it); returns the first other
/// character, left unread.
fn skip_whitespace<R: Read>(dec: &mut DecodeReader<R>) -> io::Result<Option<char>> {
    loop {
        if dec.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let text = dec.text();
        match text.char_indices().find(|(_, c)| !c.is_whitespace()) {
            Some((i, c)) => {
                dec.consume(i);
                return Ok(Some(c));
            }
            None => {
                let n = text.len();
                dec.consume(n);
            }
        }
    }
}

/// The records as they are parsed: numbered, turned into mailboxes and handed on in
/// batches, their GUIDs kept for the duplicate check and the snapshot. After the first
/// bad record nothing more is handed on (the rest of the file is still parsed, whose
/// syntax errors come first).
struct Records<'a> {
    cfg: &'a InventoryConfig,
    wanted: &'a Wanted,
    sink: &'a mut dyn FnMut(Vec<ExoMailbox>) -> bool,
    /// Records parsed.
    count: usize,
    batch: Vec<ExoMailbox>,
    /// The GUID of every record before the first bad one, in file order, and for CSV
    /// its line.
    guids: Vec<u128>,
    lines: Vec<u64>,
    bad: Option<ParseError>,
    stopped: bool,
}

impl<'a> Records<'a> {
    fn new(
        cfg: &'a InventoryConfig,
        wanted: &'a Wanted,
        sink: &'a mut dyn FnMut(Vec<ExoMailbox>) -> bool,
    ) -> Records<'a> {
        Records {
            cfg,
            wanted,
            sink,
            count: 0,
            batch: Vec::with_capacity(BATCH),
            guids: Vec::new(),
            lines: Vec::new(),
            bad: None,
            stopped: false,
        }
    }

    /// Takes the next record; false: the sink said stop.
    fn push(&mut self, rec: &Record) -> bool {
        self.count += 1;
        if self.bad.is_some() {
            return true;
        }
        let wanted = self.wanted;
        match ExoMailbox::from_fields(self.cfg, |name| wanted.get(&rec.values, name)) {
            Err(source) => {
                self.bad = Some(ParseError::Record {
                    record: self.count,
                    line: rec.line,
                    source,
                });
                self.batch = Vec::new();
                true
            }
            Ok(m) => {
                let guid = uuid::Uuid::try_parse(&m.exchange_guid)
                    .expect("ExchangeGuids are parsed GUIDs")
                    .as_u128();
                self.guids.push(guid);
                if let Some(line) = rec.line {
                    self.lines.push(line);
                }
                self.batch.push(m);
                self.batch.len() < BATCH || self.flush()
            }
        }
    }

    fn flush(&mut self) -> bool {
        if self.batch.is_empty() || self.stopped {
            return !self.stopped;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.stopped = !(self.sink)(batch);
        !self.stopped
    }

    /// After a parse without syntax errors: the first duplicate GUID, else the first bad
    /// record, else the last batch handed on and the sorted GUIDs.
    fn finish(mut self) -> Result<Vec<u128>, Fail> {
        let mut sorted = self.guids.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            let twice: HashSet<u128> = sorted
                .windows(2)
                .filter(|w| w[0] == w[1])
                .map(|w| w[0])
                .collect();
            drop(sorted);
            // The first record whose GUID an earlier record has, as a reader in file
            // order would have found it.
            let mut first: HashMap<u128, usize> = HashMap::with_capacity(twice.len());
            for (i, g) in self.guids.iter().enumerate() {
                if !twice.contains(g) {
                    continue;
                }
                if let Some(f) = first.get(g) {
                    return Err(ParseError::Record {
                        record: i + 1,
                        line: self.lines.get(i).copied(),
                        source: FieldError {
                            field: "ExchangeGuid".into(),
                            message: format!(
                                "{} also appears in record {f}",
                                uuid::Uuid::from_u128(*g).hyphenated()
                            ),
                        },
                    }
                    .into());
                }
                first.insert(*g, i + 1);
            }
            unreachable!("a GUID seen twice is found twice");
        }
        if let Some(bad) = self.bad.take() {
            return Err(bad.into());
        }
        drop(std::mem::take(&mut self.guids));
        drop(std::mem::take(&mut self.lines));
        if !self.flush() {
            return Err(Fail::Stopped);
        }
        Ok(sorted)
    }
}

/// The fields kept from each record: the inventory's plus the configured attributes
/// (at most three), which a 64-bit mask of the ones seen in a record covers.
struct Wanted {
    names: Vec<String>,
}

impl Wanted {
    fn new(cfg: &InventoryConfig) -> Wanted {
        let mut names: Vec<String> = FIELDS.iter().map(|s| s.to_string()).collect();
        let attrs = [
            cfg.company_attribute.as_ref(),
            cfg.department_attribute.as_ref(),
            Some(&cfg.license_attribute),
        ];
        for a in attrs.into_iter().flatten() {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(a.as_str())) {
                names.push(a.as_str().to_string());
            }
        }
        const { assert!(FIELDS.len() + 3 <= 64) };
        Wanted { names }
    }

    /// The slot of a property name, ignoring ASCII case. A Get-Mailbox record has some
    /// 140 properties and the wanted list under twenty names, so comparing lengths first
    /// rejects almost every name at once; this beat a hash lookup in the import profile.
    fn slot(&self, key: &str) -> Option<usize> {
        self.names
            .iter()
            .position(|n| n.len() == key.len() && n.eq_ignore_ascii_case(key))
    }

    /// Refuses a property a record already had (compared as [`Wanted::slot`] does):
    /// the later value would silently win. serde_json adds the line and column.
    fn first_time<E: de::Error>(&self, slot: usize, seen: &mut u64) -> Result<(), E> {
        let bit = 1 << slot;
        if *seen & bit != 0 {
            return Err(E::custom(format!(
                "property `{}` appears twice in one record (names compare without regard to case)",
                self.names[slot]
            )));
        }
        *seen |= bit;
        Ok(())
    }

    fn get<'v>(&self, values: &'v [Value], name: &str) -> Option<&'v Value> {
        values.get(self.slot(name)?).filter(|v| !v.is_null())
    }
}

struct Record {
    values: Vec<Value>,
    line: Option<u64>,
}

/// JSON as serde_json reads it, a value at a time from the decoded text in the buffer,
/// where it keeps the line and column serde_json would give each byte of the whole text:
/// the structure around the records (the array, the envelope's or single record's
/// object) is read here, in the same steps and with the same errors as serde_json's
/// own `SeqAccess` and `MapAccess` (`de.rs`); every value (a record, a property, a
/// name) is parsed by serde_json from the buffer, its error placed in the whole text.
/// The result is the one serde_json gives the file parsed in one piece, which the tests
/// compare for many broken documents cut at every size.
struct Json<'a, 'd, R> {
    dec: &'d mut DecodeReader<R>,
    wanted: &'a Wanted,
    /// The line (from 1) and column (bytes since the last line feed) of the next byte.
    line: u64,
    col: u64,
}

/// The messages of serde_json's `ErrorCode`s that the structure can give.
const EOF_LIST: &str = "EOF while parsing a list";
const EOF_OBJECT: &str = "EOF while parsing an object";
const EOF_VALUE: &str = "EOF while parsing a value";
const EXPECTED_COLON: &str = "expected `:`";
const LIST_COMMA_OR_END: &str = "expected `,` or `]`";
const OBJECT_COMMA_OR_END: &str = "expected `,` or `}`";
const KEY_MUST_BE_A_STRING: &str = "key must be a string";
const TRAILING_COMMA: &str = "trailing comma";
const TRAILING_CHARACTERS: &str = "trailing characters";

impl<R: Read> Json<'_, '_, R> {
    /// Consumes `n` bytes of the buffer, counting lines.
    fn eat(&mut self, n: usize) {
        let done = &self.dec.buffer()[..n];
        match memchr::memrchr(b'\n', done) {
            Some(last) => {
                self.line += memchr::memchr_iter(b'\n', done).count() as u64;
                self.col = (n - last - 1) as u64;
            }
            None => self.col += n as u64,
        }
        self.dec.consume(n);
    }

    /// Skips whitespace; the next byte, left unread, or `None` at the end of the text
    /// (serde_json's `parse_whitespace`).
    fn peek(&mut self) -> Result<Option<u8>, Fail> {
        loop {
            let buf = self.dec.buffer();
            let space = buf
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
                .count();
            let next = buf.get(space).copied();
            self.eat(space);
            if next.is_some() {
                return Ok(next);
            }
            if self.dec.fill_more().map_err(|_| Fail::Decoder)? == 0 {
                return Ok(None);
            }
        }
    }

    /// An error at a byte just peeked, or at the end (serde_json's `peek_error`).
    fn peek_error(&self, code: &str, peeked: Option<u8>) -> Fail {
        let col = self.col + u64::from(peeked.is_some());
        self.error_at(code, self.line, col)
    }

    fn error_at(&self, code: &str, line: u64, col: u64) -> Fail {
        ParseError::Format(format!(
            "invalid JSON export: {code} at line {line} column {col}"
        ))
        .into()
    }

    /// Parses one value with `seed`, from the buffer; more is read while the value, or
    /// an error in it, reaches the buffer's end (a number, a name, or a record cut by
    /// it). Its error is placed in the whole text.
    fn value<T>(
        &mut self,
        seed: impl Copy + for<'de> DeserializeSeed<'de, Value = T>,
    ) -> Result<T, Fail> {
        loop {
            let buf = self.dec.text();
            let parsed = {
                let mut de = serde_json::Deserializer::from_str(buf);
                seed.deserialize(&mut de)
                    .map(|v| (v, de.into_iter::<IgnoredAny>().byte_offset()))
            };
            let at_end = match &parsed {
                Ok((_, len)) => *len == buf.len(),
                Err(e) => {
                    e.is_eof() || index_of(buf.as_bytes(), e.line(), e.column()) + 2 > buf.len()
                }
            };
            if at_end && self.dec.fill_more().map_err(|_| Fail::Decoder)? > 0 {
                continue;
            }
            return match parsed {
                Ok((v, len)) => {
                    self.eat(len);
                    Ok(v)
                }
                Err(e) => Err(self.place(&e)),
            };
        }
    }

    /// serde_json's error for a value parsed from the buffer, placed in the whole text.
    fn place(&self, e: &serde_json::Error) -> Fail {
        let (line, col) = (e.line() as u64, e.column() as u64);
        let text = e.to_string();
        let code = text
            .strip_suffix(&format!(" at line {line} column {col}"))
            .unwrap_or(&text);
        if line == 0 {
            return ParseError::Format(format!("invalid JSON export: {code}")).into();
        }
        let (line, col) = if line == 1 {
            (self.line, self.col + col)
        } else {
            (self.line + line - 1, col)
        };
        self.error_at(code, line, col)
    }

    /// The document (the decoder is at its `[` or `{`): serde_json's `deserialize_any`
    /// of the old `TopSeed`, then `Deserializer::end`.
    fn document(&mut self, records: &mut Records<'_>) -> Result<(), Fail> {
        match self.peek()? {
            Some(b'[') => {
                self.eat(1);
                self.records(records)?;
            }
            _ => {
                self.eat(1);
                self.object(records)?;
            }
        }
        match self.peek()? {
            None => Ok(()),
            b => Err(self.peek_error(TRAILING_CHARACTERS, b)),
        }
    }

    /// The records of an array whose `[` was read, to its `]` (`visit_seq` over
    /// `SeqAccess::next_element_seed`, then `end_seq`).
    fn records(&mut self, records: &mut Records<'_>) -> Result<(), Fail> {
        let mut first = true;
        loop {
            let b = self.peek()?;
            match b {
                None => return Err(self.peek_error(EOF_LIST, b)),
                Some(b']') => {
                    self.eat(1);
                    return Ok(());
                }
                Some(_) if first => first = false,
                Some(b',') => {
                    self.eat(1);
                    match self.peek()? {
                        Some(b']') => return Err(self.peek_error(TRAILING_COMMA, Some(b']'))),
                        Some(_) => {}
                        None => return Err(self.peek_error(EOF_VALUE, None)),
                    }
                }
                Some(_) => return Err(self.peek_error(LIST_COMMA_OR_END, b)),
            }
            let rec = self.value(RecordSeed(self.wanted))?;
            if !records.push(&rec) {
                return Err(Fail::Stopped);
            }
        }
    }

    /// A top-level object whose `{` was read: the envelope when a `value` property holds
    /// an array, otherwise one record (`visit_map` over `MapAccess`, then `end_map`).
    fn object(&mut self, records: &mut Records<'_>) -> Result<(), Fail> {
        let wanted = self.wanted;
        let mut values = vec![Value::Null; wanted.names.len()];
        let mut seen = 0;
        let mut envelope = false;
        let mut first = true;
        loop {
            let b = self.peek()?;
            match b {
                None => return Err(self.peek_error(EOF_OBJECT, b)),
                Some(b'}') => {
                    self.eat(1);
                    break;
                }
                Some(b'"') if first => first = false,
                Some(_) if first => return Err(self.peek_error(KEY_MUST_BE_A_STRING, b)),
                Some(b',') => {
                    self.eat(1);
                    let b = self.peek()?;
                    match b {
                        Some(b'"') => {}
                        Some(b'}') => return Err(self.peek_error(TRAILING_COMMA, b)),
                        Some(_) => return Err(self.peek_error(KEY_MUST_BE_A_STRING, b)),
                        None => return Err(self.peek_error(EOF_VALUE, b)),
                    }
                }
                Some(_) => return Err(self.peek_error(OBJECT_COMMA_OR_END, b)),
            }
            let key: String = self.value(PhantomData::<String>)?;
            // A `value` key holding an array, wherever it stands, is the envelope Windows
            // PowerShell and the Exchange REST endpoint wrap collections in
            // (`{"@odata.context": ..., "value": [...]}`, `{"value": [...], "Count": n}`);
            // otherwise the object is one record.
            if !envelope && key.eq_ignore_ascii_case("value") {
                self.colon()?;
                if self.peek()? == Some(b'[') {
                    self.eat(1);
                    self.records(records)?;
                    envelope = true;
                } else {
                    self.value(PhantomData::<NotRecords>)?;
                }
                continue;
            }
            match wanted.slot(&key) {
                Some(i) => {
                    if let Err(message) = wanted.first_time::<serde_json::Error>(i, &mut seen) {
                        // Placed where serde_json's `end_map` leaves the reader: past the
                        // whitespace after the name, and past a `}`.
                        let next = self.peek()?;
                        let col = self.col + u64::from(next == Some(b'}'));
                        return Err(self.error_at(&message.to_string(), self.line, col));
                    }
                    self.colon()?;
                    values[i] = self.value(PhantomData::<Value>)?;
                }
                None => {
                    self.colon()?;
                    self.value(PhantomData::<IgnoredAny>)?;
                }
            }
        }
        if !envelope && !records.push(&Record { values, line: None }) {
            return Err(Fail::Stopped);
        }
        Ok(())
    }

    /// serde_json's `parse_object_colon`.
    fn colon(&mut self) -> Result<(), Fail> {
        match self.peek()? {
            Some(b':') => {
                self.eat(1);
                Ok(())
            }
            b @ Some(_) => Err(self.peek_error(EXPECTED_COLON, b)),
            None => Err(self.peek_error(EOF_OBJECT, None)),
        }
    }
}

/// The offset in `buf` of a line (from 1) and column, as serde_json places errors.
fn index_of(buf: &[u8], line: usize, col: usize) -> usize {
    let start = match line.checked_sub(2) {
        None => 0,
        Some(n) => memchr::memchr_iter(b'\n', buf)
            .nth(n)
            .map_or(buf.len(), |i| i + 1),
    };
    start + col
}

/// A `value` property that is not an array: parsed and skipped as any value
/// (serde_json's `deserialize_any`, which checks more than `IgnoredAny` does).
struct NotRecords;

impl<'de> de::Deserialize<'de> for NotRecords {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<NotRecords, D::Error> {
        d.deserialize_any(NotRecords)
    }
}

impl<'de> Visitor<'de> for NotRecords {
    type Value = NotRecords;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NotRecords, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(NotRecords)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NotRecords, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(NotRecords)
    }
    fn visit_bool<E>(self, _: bool) -> Result<NotRecords, E> {
        Ok(NotRecords)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NotRecords, E> {
        Ok(NotRecords)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NotRecords, E> {
        Ok(NotRecords)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NotRecords, E> {
        Ok(NotRecords)
    }
    fn visit_str<E>(self, _: &str) -> Result<NotRecords, E> {
        Ok(NotRecords)
    }
    fn visit_unit<E>(self) -> Result<NotRecords, E> {
        Ok(NotRecords)
    }
}

struct KeySeed<'a>(&'a Wanted);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a property name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.slot(v))
    }
}

fn read_record<'de, A: MapAccess<'de>>(wanted: &Wanted, map: &mut A) -> Result<Record, A::Error> {
    let mut values = vec![Value::Null; wanted.names.len()];
    let mut seen = 0;
    while let Some(slot) = map.next_key_seed(KeySeed(wanted))? {
        match slot {
            Some(i) => {
                wanted.first_time(i, &mut seen)?;
                values[i] = map.next_value()?;
            }
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(Record { values, line: None })
}

#[derive(Clone, Copy)]
struct RecordSeed<'a>(&'a Wanted);

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Record;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Record, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Record;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mailbox object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        read_record(self.0, &mut map)
    }
}

/// The text handed to the csv reader since the current record's start (offsets count
/// from the start of the CSV text): what numbers lines and finds a cell left open.
struct Window<'d, R> {
    dec: &'d mut DecodeReader<R>,
    kept: Vec<u8>,
    /// The offset of `kept[0]`.
    base: u64,
}

impl<R: Read> Read for Window<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.dec.read(buf)?;
        self.kept.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl<R> Window<'_, R> {
    /// The text from `offset` on (which must not be before what is kept).
    fn from(&self, offset: u64) -> &[u8] {
        let i = usize::try_from(offset.saturating_sub(self.base)).unwrap_or(usize::MAX);
        &self.kept[i.min(self.kept.len())..]
    }

    /// Forgets the text before `offset`, now and then (so that each byte is moved a
    /// bounded number of times).
    fn keep_from(&mut self, offset: u64) {
        let cut = usize::try_from(offset.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .min(self.kept.len());
        if cut > (64 * 1024).max(self.kept.len() / 2) {
            self.kept.drain(..cut);
            self.base += cut as u64;
        }
    }

    /// Where a record really starts. With CRLF line ends (Export-Csv on Windows) the csv
    /// reader places each record at the `\n` that ends the line before, one line early.
    fn record_start(&self, byte: u64) -> u64 {
        let skip = self
            .from(byte.max(self.base))
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        byte.max(self.base) + skip as u64
    }
}

fn parse_csv<R: Read>(
    dec: &mut DecodeReader<R>,
    wanted: &Wanted,
    records: &mut Records<'_>,
) -> Result<(), Fail> {
    // Windows PowerShell's Export-Csv starts with `#TYPE <type name>` unless told not to.
    let mut skipped_lines = 0;
    while dec.buffer().len() < 5 && dec.fill_more().map_err(|_| Fail::Decoder)? > 0 {}
    if dec.buffer().starts_with(b"#TYPE") {
        skipped_lines = 1;
        loop {
            let buf = dec.buffer();
            if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                dec.consume(i + 1);
                break;
            }
            let n = buf.len();
            dec.consume(n);
            if dec.fill_more().map_err(|_| Fail::Decoder)? == 0 {
                break;
            }
        }
    }
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .buffer_capacity(64 * 1024)
        .from_reader(Window {
            dec,
            kept: Vec::new(),
            base: 0,
        });
    let format = |message: String| -> Fail {
        ParseError::Format(format!("invalid CSV export{message}")).into()
    };
    let mut lines = Lines::new(skipped_lines);
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => return Err(format(csv_error(&e, rdr.into_inner(), &mut lines, &[]))),
    };
    let names: Vec<&str> = headers.iter().map(str::trim).collect();
    let header_line = skipped_lines + 1;
    // Two columns of one name: the reader would keep one of them silently (a second
    // ExchangeGuid column once replaced every mailbox). Names compare as `slot` does.
    let mut first_of: HashMap<String, usize> = HashMap::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        if let Some(first) = first_of.insert(name.to_ascii_lowercase(), i) {
            return Err(format(format!(
                " at line {header_line}: columns {} and {} are both named `{}` (names compare without regard to case or surrounding spaces); only one of them would be read",
                first + 1,
                i + 1,
                names[first]
            )));
        }
    }
    let slots: Vec<Option<usize>> = names.iter().map(|h| wanted.slot(h)).collect();
    if !slots
        .iter()
        .flatten()
        .any(|i| wanted.names[*i] == "ExchangeGuid")
    {
        return Err(ParseError::Format(
            "not a Get-Mailbox export: no ExchangeGuid column (expected ConvertTo-Json or Export-Csv output)".into(),
        ).into());
    }
    let mut rec = csv::StringRecord::new();
    let (mut last_start, mut last_line) = (0, lines.line);
    loop {
        match rdr.read_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(format(csv_error(&e, rdr.into_inner(), &mut lines, &names))),
        }
        let mut values = vec![Value::Null; wanted.names.len()];
        for (cell, slot) in rec.iter().zip(&slots) {
            if let Some(i) = slot {
                values[*i] = Value::String(cell.to_string());
            }
        }
        let window = rdr.get_mut();
        let line = rec.position().map(|p| {
            last_start = window.record_start(p.byte());
            last_line = lines.at(window, last_start);
            window.keep_from(last_start);
            last_line
        });
        if !records.push(&Record { values, line }) {
            return Err(Fail::Stopped);
        }
    }
    // A file cut inside a quoted cell reads as a last record whose cell ends at the cut.
    let mut scan = QuoteScan::new(last_line);
    scan.feed(rdr.get_ref().from(last_start));
    match scan.open_cell(&names) {
        Some(open) => Err(format(open)),
        None => Ok(()),
    }
}

/// Line numbers of offsets of the CSV text, counted forward as the records come.
struct Lines {
    at: u64,
    line: u64,
}

impl Lines {
    fn new(skipped_lines: u64) -> Lines {
        Lines {
            at: 0,
            line: skipped_lines + 1,
        }
    }

    /// The line of `offset`; offsets come in increasing order, and the window holds the
    /// text from the last one on.
    fn at<R>(&mut self, window: &Window<'_, R>, offset: u64) -> u64 {
        let offset = offset.max(self.at);
        let span = window.from(self.at);
        let len = usize::try_from(offset - self.at).map_or(span.len(), |n| n.min(span.len()));
        self.line += newlines(&span[..len]);
        self.at = offset;
        self.line
    }
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

/// A column for messages: its number and, when known, its name.
fn column(i: usize, names: &[&str]) -> String {
    match names.get(i) {
        Some(name) if !name.is_empty() => format!("column {} ({name})", i + 1),
        _ => format!("column {}", i + 1),
    }
}

/// The message of a CSV reader error, from " at line …" on. A row of too few cells whose
/// last cell is a quote left open is reported as the cut it is (the text is read to its
/// end to tell).
fn csv_error<R: Read>(
    e: &csv::Error,
    window: Window<'_, R>,
    lines: &mut Lines,
    names: &[&str],
) -> String {
    let start = e.position().map(|p| window.record_start(p.byte()));
    if let (csv::ErrorKind::UnequalLengths { .. }, Some(start)) = (e.kind(), start) {
        let mut scan = QuoteScan::new(lines.at(&window, start));
        scan.feed(window.from(start));
        let dec = &mut *window.dec;
        while let Ok(buf) = dec.fill_buf() {
            if buf.is_empty() {
                break;
            }
            scan.feed(buf);
            let n = buf.len();
            dec.consume(n);
        }
        if let Some(open) = scan.open_cell(names) {
            return open;
        }
    }
    let at = start
        .map(|s| format!(" at line {}", lines.at(&window, s)))
        .unwrap_or_default();
    let msg = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("a row has {len} fields where the header has {expected_len}"),
        _ => e.to_string(),
    };
    format!("{at}: {msg}")
}

/// Whether the text from a record's start to the end of the file ends inside a quoted
/// cell, read as the csv reader reads it (a cell is quoted when it starts with `"`; `""`
/// inside it is a quote), fed a piece at a time.
struct QuoteScan {
    state: QuoteState,
    col: usize,
    line: u64,
    /// Line and column of the last cell opened with a quote.
    opened: (u64, usize),
}

#[derive(PartialEq)]
enum QuoteState {
    CellStart,
    Unquoted,
    Quoted,
    QuoteInQuoted,
}

impl QuoteScan {
    /// A scan from a record's start, which is on `line`.
    fn new(line: u64) -> QuoteScan {
        QuoteScan {
            state: QuoteState::CellStart,
            col: 0,
            line,
            opened: (line, 0),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        use QuoteState::*;
        for b in bytes {
            self.state = match (&self.state, b) {
                (Quoted, b'"') => QuoteInQuoted,
                (Quoted, _) => Quoted,
                (QuoteInQuoted, b'"') => Quoted,
                (CellStart, b'"') => {
                    self.opened = (self.line, self.col);
                    Quoted
                }
                (_, b',') => {
                    self.col += 1;
                    CellStart
                }
                (_, b'\r' | b'\n') => {
                    self.col = 0;
                    CellStart
                }
                _ => Unquoted,
            };
            if *b == b'\n' {
                self.line += 1;
            }
        }
    }

    /// If the text ended inside a quoted cell, the message naming where that cell starts.
    fn open_cell(&self, names: &[&str]) -> Option<String> {
        (self.state == QuoteState::Quoted).then(|| {
            format!(
                ": the quoted cell at line {}, {} is never closed: the file ends inside it (was it cut short?)",
                self.opened.0,
                column(self.opened.1, names)
            )
        })
    }
}

#[cfg(test)]
mod previous;
#[cfg(test)]
mod tests;
