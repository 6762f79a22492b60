//! Rendering rows as a table fitted to the terminal, JSON or CSV.

use std::io::{IsTerminal, Write};

use comfy_table::{Cell, CellAlignment, ContentArrangement, Row, Table, presets};
use serde::Serialize;

/// How a command prints what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

impl Format {
    /// The format asked for, else a table on a terminal and JSON when piped.
    pub fn resolve(asked: Option<Format>) -> Format {
        asked.unwrap_or_else(|| {
            if std::io::stdout().is_terminal() {
                Format::Table
            } else {
                Format::Json
            }
        })
    }
}

/// The width tables are fitted to: the terminal's, else `COLUMNS`, else none.
fn table_width() -> Option<u16> {
    if std::io::stdout().is_terminal() {
        if let Some((terminal_size::Width(w), _)) = terminal_size::terminal_size() {
            return Some(w);
        }
    }
    std::env::var("COLUMNS").ok()?.trim().parse().ok()
}

/// A column: its header and whether its figures align right.
pub struct Column {
    pub header: &'static str,
    pub numeric: bool,
}

/// Builds a table with one line per row, fitted to the terminal: cells that do not fit
/// are cut with an ellipsis instead of wrapping.
pub fn table(columns: &[Column], rows: impl IntoIterator<Item = Vec<String>>) -> Table {
    let mut t = Table::new();
    t.load_style(presets::UTF8_HORIZONTAL_ONLY);
    t.set_truncation_indicator("…");
    match table_width() {
        Some(w) => {
            t.set_width(w);
            t.set_content_arrangement(ContentArrangement::Dynamic);
        }
        None => {
            t.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    t.set_header(columns.iter().map(|c| Cell::new(c.header)));
    for r in rows {
        let mut row = Row::from(r);
        row.max_height(1);
        t.add_row(row);
    }
    for (i, c) in columns.iter().enumerate() {
        if c.numeric {
            if let Some(col) = t.column_mut(i) {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
    }
    t
}

/// Writes `value` as pretty JSON followed by a newline.
pub fn write_json<T: Serialize + ?Sized>(out: &mut impl Write, value: &T) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes a header and rows as CSV.
pub fn write_csv(
    out: &mut impl Write,
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<String>>,
) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(header)?;
    for r in rows {
        w.write_record(&r)?;
    }
    w.flush()?;
    Ok(())
}

/// An optional value as table or CSV text.
pub fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// A money or size figure with two decimals.
pub fn fixed2(v: f64) -> String {
    format!("{v:.2}")
}
