//! Rendering rows as a table fitted to the terminal, JSON or CSV.

use std::io::{IsTerminal, Write};

use comfy_table::{Cell, CellAlignment, ContentArrangement, LineStyle, Row, Table, TableStyle};
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
    if std::io::stdout().is_terminal()
        && let Some((terminal_size::Width(w), _)) = terminal_size::terminal_size()
    {
        return Some(w);
    }
    std::env::var("COLUMNS").ok()?.trim().parse().ok()
}

/// A column: its header, whether its figures align right, and how much it matters when
/// the terminal is too narrow for all columns (the lowest go first).
pub struct Column {
    pub header: &'static str,
    pub numeric: bool,
    pub priority: u8,
}

impl Column {
    pub const fn new(header: &'static str, numeric: bool, priority: u8) -> Column {
        Column {
            header,
            numeric,
            priority,
        }
    }
}

/// Builds a table with one line per row, fitted to the terminal: the least important
/// columns are left out until the rest fit, and cells still too wide are cut with an
/// ellipsis instead of wrapping.
pub fn table(columns: &[Column], rows: impl IntoIterator<Item = Vec<String>>) -> Table {
    fitted(columns, rows, table_width())
}

/// Cuts `cell` to at most `max` characters, in time linear in `max`. The table's layout
/// then cuts it to its column and adds the ellipsis, as it would have for the whole cell
/// (a cell longer than the table can never show more); left whole, a multi-megabyte cell
/// cost the layout time that grew with the square of its length.
fn cut(cell: &mut String, max: usize) {
    if cell.len() > max
        && let Some((at, _)) = cell.char_indices().nth(max)
    {
        cell.truncate(at);
    }
}

/// [`table`] for a given width (`None`: as wide as the cells are).
fn fitted(
    columns: &[Column],
    rows: impl IntoIterator<Item = Vec<String>>,
    width: Option<u16>,
) -> Table {
    let mut rows: Vec<Vec<String>> = rows.into_iter().collect();
    if let Some(w) = width {
        // One character more than the table is wide, so that the layout still sees the
        // cell as too long and marks the cut.
        let max = usize::from(w) + 1;
        for cell in rows.iter_mut().flatten() {
            cut(cell, max);
        }
    }
    let mut keep: Vec<usize> = (0..columns.len()).collect();
    if let Some(w) = width {
        let natural = |i: usize| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
                .max(columns[i].header.chars().count())
                // A wide column is counted at most this wide: truncation handles the rest.
                .min(24)
                + 2
        };
        let widths: Vec<usize> = (0..columns.len()).map(natural).collect();
        while keep.len() > 2 && keep.iter().map(|i| widths[*i]).sum::<usize>() > usize::from(w) {
            let (pos, _) = keep
                .iter()
                .enumerate()
                .min_by_key(|(_, i)| columns[**i].priority)
                .expect("more than two columns");
            keep.remove(pos);
        }
    }
    let mut t = Table::new();
    t.load_style(TableStyle::new().header_separator(LineStyle::none().fill('─').junction('─')));
    t.set_truncation_indicator("…");
    match width {
        Some(w) => {
            t.set_width(w);
            t.set_content_arrangement(ContentArrangement::Dynamic);
        }
        None => {
            t.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    let mut header = Row::from(keep.iter().map(|i| Cell::new(columns[*i].header)));
    header.max_height(1);
    t.set_header(header);
    for r in rows {
        let mut row = Row::from(keep.iter().map(|i| r.get(*i).cloned().unwrap_or_default()));
        row.max_height(1);
        t.add_row(row);
    }
    for (pos, i) in keep.iter().enumerate() {
        if columns[*i].numeric
            && let Some(col) = t.column_mut(pos)
        {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Writes `value` as JSON and a newline: indented on a terminal, compact when piped
/// (smaller and faster for the programs that read it).
pub fn write_json<T: Serialize + ?Sized>(out: &mut impl Write, value: &T) -> anyhow::Result<()> {
    if std::io::stdout().is_terminal() {
        serde_json::to_writer_pretty(&mut *out, value)?;
    } else {
        serde_json::to_writer(&mut *out, value)?;
    }
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes `value` as indented JSON and a newline, for files people open.
pub fn write_json_pretty<T: Serialize + ?Sized>(
    out: &mut impl Write,
    value: &T,
) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: [Column; 3] = [
        Column::new("IDENTITY", false, 3),
        Column::new("NAME", false, 2),
        Column::new("SIZE MB", true, 1),
    ];

    fn row(name: &str) -> Vec<String> {
        vec!["user.1@contoso.com".into(), name.into(), "12.50".into()]
    }

    #[test]
    fn a_multi_megabyte_cell_is_cut_to_the_table_and_shows_as_a_shorter_one_would() {
        let huge = "Ä".repeat(4 << 20);
        let shown = fitted(&COLUMNS, [row(&huge)], Some(80)).to_string();
        assert!(shown.len() < 1024, "{} bytes", shown.len());
        assert!(shown.contains('…'), "{shown}");
        // The same as a cell only just too long for the table.
        let short = fitted(&COLUMNS, [row(&"Ä".repeat(200))], Some(80)).to_string();
        assert_eq!(shown, short);
        // Lines and wide characters: cut on a character boundary, first line shown.
        let lines = format!("first line\n{}", "漢".repeat(1 << 20));
        let shown = fitted(&COLUMNS, [row(&lines)], Some(80)).to_string();
        assert!(shown.contains("first line"), "{shown}");
        assert!(shown.len() < 1024);
    }

    #[test]
    fn without_a_width_every_cell_is_whole() {
        let long = "x".repeat(10_000);
        let shown = fitted(&COLUMNS, [row(&long)], None).to_string();
        assert!(shown.contains(&long));
    }

    #[test]
    fn cut_counts_characters_not_bytes() {
        let mut s = "ÄÖÜ".repeat(10);
        cut(&mut s, 4);
        assert_eq!(s, "ÄÖÜÄ");
        let mut s = "short".to_string();
        cut(&mut s, 80);
        assert_eq!(s, "short");
    }
}
