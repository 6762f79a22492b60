//! The import as it was before it streamed: the whole file decoded, parsed and checked
//! in memory. The tests hold the streaming reader to it, result for result and message
//! for message.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::config::InventoryConfig;
use crate::inventory::{ExoMailbox, FIELDS, FieldError};
use crate::text::Encoding;
use crate::text::decode;

/// The shape an export was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportShape {
    Json,
    Csv,
}

/// The mailboxes of an export, in file order.
#[derive(Debug)]
pub struct Export {
    pub shape: ExportShape,
    pub encoding: Encoding,
    pub mailboxes: Vec<ExoMailbox>,
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

/// Parses export bytes.
pub fn parse_export(bytes: &[u8], cfg: &InventoryConfig) -> Result<Export, ParseError> {
    let (text, encoding) = decode(bytes).map_err(ParseError::Format)?;
    let wanted = Wanted::new(cfg);
    let trimmed = text.trim_start();
    let (shape, records) = match trimmed.chars().next() {
        None => return Err(ParseError::Format("the file is empty".into())),
        Some('[' | '{') => (ExportShape::Json, parse_json(trimmed, &wanted)?),
        Some(_) => (ExportShape::Csv, parse_csv(trimmed, &wanted)?),
    };
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(records.len());
    let mut mailboxes = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        let record = i + 1;
        let m = ExoMailbox::from_fields(cfg, |name| wanted.get(&rec.values, name)).map_err(
            |source| ParseError::Record {
                record,
                line: rec.line,
                source,
            },
        )?;
        if let Some(first) = seen.insert(m.exchange_guid.clone(), record) {
            return Err(ParseError::Record {
                record,
                line: rec.line,
                source: FieldError {
                    field: "ExchangeGuid".into(),
                    message: format!("{} also appears in record {first}", m.exchange_guid),
                },
            });
        }
        mailboxes.push(m);
    }
    Ok(Export {
        shape,
        encoding,
        mailboxes,
    })
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

fn parse_json(text: &str, wanted: &Wanted) -> Result<Vec<Record>, ParseError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let records = TopSeed(wanted)
        .deserialize(&mut de)
        .and_then(|r| de.end().map(|_| r))
        .map_err(|e| ParseError::Format(format!("invalid JSON export: {e}")))?;
    if records.is_empty() {
        return Err(ParseError::Format("the export holds no records".into()));
    }
    Ok(records)
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

/// The whole document: an array of records, one record, or `{"value": [records], ...}`.
struct TopSeed<'a>(&'a Wanted);

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = Vec<Record>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Record>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = Vec<Record>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mailbox object or an array of them")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Record>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(r) = seq.next_element_seed(RecordSeed(self.0))? {
            out.push(r);
        }
        Ok(out)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Record>, A::Error> {
        // A `value` key holding an array, wherever it stands, is the envelope Windows
        // PowerShell and the Exchange REST endpoint wrap collections in
        // (`{"@odata.context": ..., "value": [...]}`, `{"value": [...], "Count": n}`);
        // otherwise the object is one record.
        let mut values = vec![Value::Null; self.0.names.len()];
        let mut seen = 0;
        let mut records = None;
        while let Some(key) = map.next_key::<String>()? {
            if records.is_none() && key.eq_ignore_ascii_case("value") {
                records = map.next_value_seed(MaybeRecords(self.0))?;
                continue;
            }
            match self.0.slot(&key) {
                Some(i) => {
                    self.0.first_time(i, &mut seen)?;
                    values[i] = map.next_value()?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(records.unwrap_or_else(|| vec![Record { values, line: None }]))
    }
}

struct MaybeRecords<'a>(&'a Wanted);

impl<'de> DeserializeSeed<'de> for MaybeRecords<'_> {
    type Value = Option<Vec<Record>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MaybeRecords<'_> {
    type Value = Option<Vec<Record>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        TopSeed(self.0).visit_seq(seq).map(Some)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

fn parse_csv(text: &str, wanted: &Wanted) -> Result<Vec<Record>, ParseError> {
    // Windows PowerShell's Export-Csv starts with `#TYPE <type name>` unless told not to.
    let (body, skipped_lines) = match text.strip_prefix("#TYPE") {
        Some(rest) => (rest.split_once('\n').map_or("", |(_, b)| b), 1),
        None => (text, 0),
    };
    let bytes = body.as_bytes();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let format = |message: String| ParseError::Format(format!("invalid CSV export{message}"));
    let headers = rdr
        .headers()
        .map_err(|e| format(csv_error(&e, bytes, skipped_lines, &[])))?
        .clone();
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
        ));
    }
    let mut lines = Lines::new(bytes, skipped_lines);
    let mut out = Vec::new();
    let mut rec = csv::StringRecord::new();
    let mut last_start = 0;
    while rdr
        .read_record(&mut rec)
        .map_err(|e| format(csv_error(&e, bytes, skipped_lines, &names)))?
    {
        let mut values = vec![Value::Null; wanted.names.len()];
        for (cell, slot) in rec.iter().zip(&slots) {
            if let Some(i) = slot {
                values[*i] = Value::String(cell.to_string());
            }
        }
        let line = rec.position().map(|p| {
            last_start = record_start(bytes, p.byte());
            lines.at(last_start)
        });
        out.push(Record { values, line });
    }
    // A file cut inside a quoted cell reads as a last record whose cell ends at the cut.
    if let Some(open) = open_quote(bytes, last_start, skipped_lines, &names) {
        return Err(format(open));
    }
    if out.is_empty() {
        return Err(ParseError::Format("the export holds no records".into()));
    }
    Ok(out)
}

/// Where a record really starts. With CRLF line ends (Export-Csv on Windows) the csv
/// reader places each record at the `\n` that ends the line before, one line early.
fn record_start(bytes: &[u8], byte: u64) -> usize {
    let mut start = usize::try_from(byte)
        .unwrap_or(bytes.len())
        .min(bytes.len());
    while matches!(bytes.get(start), Some(b'\r' | b'\n')) {
        start += 1;
    }
    start
}

/// Line numbers of byte offsets, counted forward as the records come.
struct Lines<'a> {
    bytes: &'a [u8],
    at: usize,
    line: u64,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8], skipped_lines: u64) -> Lines<'a> {
        Lines {
            bytes,
            at: 0,
            line: skipped_lines + 1,
        }
    }

    /// The line of `offset`; offsets come in increasing order.
    fn at(&mut self, offset: usize) -> u64 {
        let offset = offset.max(self.at);
        self.line += newlines(&self.bytes[self.at..offset]);
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
/// last cell is a quote left open is reported as the cut it is.
fn csv_error(e: &csv::Error, bytes: &[u8], skipped_lines: u64, names: &[&str]) -> String {
    let start = e.position().map(|p| record_start(bytes, p.byte()));
    if let (csv::ErrorKind::UnequalLengths { .. }, Some(start)) = (e.kind(), start)
        && let Some(open) = open_quote(bytes, start, skipped_lines, names)
    {
        return open;
    }
    let at = start
        .map(|s| format!(" at line {}", Lines::new(bytes, skipped_lines).at(s)))
        .unwrap_or_default();
    let msg = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("a row has {len} fields where the header has {expected_len}"),
        _ => e.to_string(),
    };
    format!("{at}: {msg}")
}

/// Whether the text from `start` (the last record's start) ends inside a quoted cell, read
/// as the csv reader reads it (a cell is quoted when it starts with `"`; `""` inside it is
/// a quote); if so, the message naming where that cell starts.
fn open_quote(bytes: &[u8], start: usize, skipped_lines: u64, names: &[&str]) -> Option<String> {
    #[derive(PartialEq)]
    enum State {
        CellStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let (mut state, mut col, mut opened) = (State::CellStart, 0, (start, 0));
    for (i, b) in bytes.iter().enumerate().skip(start) {
        state = match (state, b) {
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) => State::Quoted,
            (State::QuoteInQuoted, b'"') => State::Quoted,
            (State::CellStart, b'"') => {
                opened = (i, col);
                State::Quoted
            }
            (_, b',') => {
                col += 1;
                State::CellStart
            }
            (_, b'\r' | b'\n') => {
                col = 0;
                State::CellStart
            }
            _ => State::Unquoted,
        };
    }
    (state == State::Quoted).then(|| {
        format!(
            ": the quoted cell at line {}, {} is never closed: the file ends inside it (was it cut short?)",
            Lines::new(bytes, skipped_lines).at(opened.0),
            column(opened.1, names)
        )
    })
}
