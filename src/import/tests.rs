use super::previous;
use super::*;

const G1: &str = "11111111-1111-4111-8111-111111111111";
const G2: &str = "22222222-2222-4222-8222-222222222222";

fn parse(bytes: &[u8]) -> Result<Export, ParseError> {
    parse_export(bytes, &InventoryConfig::default())
}

fn utf16le_bom(s: &str) -> Vec<u8> {
    let mut v = vec![0xFF, 0xFE];
    v.extend(s.encode_utf16().flat_map(|u| u.to_le_bytes()));
    v
}

#[test]
fn json_array_object_and_envelope() {
    let arr = format!(
        r#"[{{"ExchangeGuid":"{G1}","WhenSoftDeleted":"\/Date(1690000000000)\/","Extra":{{"deep":[1,2]}}}},
           {{"ExchangeGuid":"{G2}","WhenSoftDeleted":"2023-07-22T04:26:40Z"}}]"#
    );
    let e = parse(arr.as_bytes()).unwrap();
    assert_eq!(e.shape, ExportShape::Json);
    assert_eq!(e.mailboxes.len(), 2);
    assert_eq!(
        e.mailboxes[0].when_soft_deleted,
        e.mailboxes[1].when_soft_deleted
    );

    let one = format!(r#"{{"DisplayName":"A","exchangeguid":"{G1}"}}"#);
    let e = parse(one.as_bytes()).unwrap();
    assert_eq!(e.mailboxes.len(), 1);
    assert_eq!(e.mailboxes[0].display_name.as_deref(), Some("A"));

    let env =
        format!(r#"{{"value":[{{"ExchangeGuid":"{G1}"}},{{"ExchangeGuid":"{G2}"}}],"Count":2}}"#);
    assert_eq!(parse(env.as_bytes()).unwrap().mailboxes.len(), 2);
}

#[test]
fn csv_with_type_line_and_utf16() {
    let csv = format!(
        "#TYPE Deserialized.Microsoft.Exchange.Data.Directory.Management.Mailbox\r\n\
         \"DisplayName\",\"ExchangeGuid\",\"InPlaceHolds\",\"LitigationHoldEnabled\"\r\n\
         \"Ann, B.\",\"{G1}\",\"UniHabc mbxdef:1\",\"True\"\r\n\
         \"Bo\",\"{G2}\",\"\",\"False\"\r\n"
    );
    for (bytes, enc) in [
        (csv.clone().into_bytes(), Encoding::Utf8),
        (
            [&[0xEF, 0xBB, 0xBF][..], csv.as_bytes()].concat(),
            Encoding::Utf8Bom,
        ),
        (utf16le_bom(&csv), Encoding::Utf16Le),
    ] {
        let e = parse(&bytes).unwrap();
        assert_eq!(e.shape, ExportShape::Csv);
        assert_eq!(e.encoding, enc);
        assert_eq!(e.mailboxes.len(), 2);
        assert_eq!(e.mailboxes[0].display_name.as_deref(), Some("Ann, B."));
        assert_eq!(e.mailboxes[0].in_place_holds, ["UniHabc", "mbxdef:1"]);
        assert!(e.mailboxes[0].litigation_hold);
        assert!(!e.mailboxes[1].litigation_hold);
    }
}

#[test]
fn errors_name_the_record_and_field() {
    let json = format!(r#"[{{"ExchangeGuid":"{G1}"}},{{"DisplayName":"no guid"}}]"#);
    match parse(json.as_bytes()).unwrap_err() {
        ParseError::Record { record, source, .. } => {
            assert_eq!(record, 2);
            assert_eq!(source.field, "ExchangeGuid");
        }
        other => panic!("{other:?}"),
    }
    let csv = format!("ExchangeGuid,WhenSoftDeleted\n{G1},2023-01-01\n{G2},someday\n");
    match parse(csv.as_bytes()).unwrap_err() {
        ParseError::Record {
            record,
            line,
            source,
        } => {
            assert_eq!((record, line), (2, Some(3)));
            assert_eq!(source.field, "WhenSoftDeleted");
        }
        other => panic!("{other:?}"),
    }
    let dup = format!(
        r#"[{{"ExchangeGuid":"{G1}"}},{{"ExchangeGuid":"{}"}}]"#,
        G1.to_uppercase()
    );
    assert!(matches!(
        parse(dup.as_bytes()).unwrap_err(),
        ParseError::Record { record: 2, .. }
    ));
}

#[test]
fn unrecognised_input_is_refused() {
    for (bytes, needle) in [
        (&b""[..], "empty"),
        (b"   \n", "empty"),
        (b"[]", "no records"),
        (b"[1,2]", "expected a mailbox object"),
        (b"{\"ExchangeGuid\": ", "invalid JSON"),
        (b"Name,Size\nx,1\n", "no ExchangeGuid column"),
        (b"\xff\xfe\x00", "odd number"),
        (b"ExchangeGuid\n\xc3\x28\n", "not UTF-8"),
    ] {
        let e = parse(bytes).unwrap_err();
        let ParseError::Format(msg) = e else {
            panic!("{e:?}")
        };
        assert!(msg.contains(needle), "{msg}");
    }
}

/// Parses as the import does, reading `chunk` bytes at a time: the mailboxes, or the
/// error as a line of text.
fn streamed(bytes: &[u8], chunk: usize) -> Result<Vec<ExoMailbox>, String> {
    let cfg = config();
    let mut out = Vec::new();
    let mut each = |batch: Vec<ExoMailbox>| {
        assert!(!batch.is_empty() && batch.len() <= BATCH);
        out.extend(batch);
        true
    };
    match super::parse(bytes, &cfg, &mut each, chunk) {
        Ok(s) => {
            assert_eq!(s.records, out.len());
            let mut ids: Vec<u128> = out
                .iter()
                .map(|m| uuid::Uuid::parse_str(&m.exchange_guid).unwrap().as_u128())
                .collect();
            ids.sort_unstable();
            assert_eq!(s.identities, ids);
            Ok(out)
        }
        Err(Fail::Parse(e)) => Err(message(e)),
        Err(other) => panic!("{other:?}"),
    }
}

fn message(e: ParseError) -> String {
    match e {
        ParseError::Format(m) => m,
        ParseError::Record {
            record,
            line,
            source,
        } => format!("record {record} {line:?}: {source}"),
    }
}

/// What the import read of a file before it streamed.
fn in_one_piece(bytes: &[u8]) -> Result<Vec<ExoMailbox>, String> {
    previous::parse_export(bytes, &config())
        .map(|e| e.mailboxes)
        .map_err(|e| match e {
            previous::ParseError::Format(m) => m,
            previous::ParseError::Record {
                record,
                line,
                source,
            } => format!("record {record} {line:?}: {source}"),
        })
}

/// The configuration of the benchmarks: three attributes read.
fn config() -> InventoryConfig {
    InventoryConfig {
        company_attribute: Some("CustomAttribute1".to_string().try_into().unwrap()),
        department_attribute: Some("CustomAttribute2".to_string().try_into().unwrap()),
        ..InventoryConfig::default()
    }
}

/// The result the import had before it streamed, however the text is cut into reads.
#[track_caller]
fn same_as_before(bytes: &[u8]) -> Result<Vec<ExoMailbox>, String> {
    let before = in_one_piece(bytes);
    for chunk in [1, 2, 3, 5, 7, 64, 1000, crate::text::CHUNK] {
        assert_eq!(
            streamed(bytes, chunk),
            before,
            "chunk {chunk}: {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        );
    }
    before
}

fn rec(guid: &str, name: &str) -> String {
    format!(
        r#"{{"ExchangeGuid": "{guid}", "DisplayName": "{name}", "Extra": {{"deep": [1, [2.5e3, -0], {{"x": null}}], "s": "a\"b\\c\u00e9\ud83d\ude42"}}, "WhenSoftDeleted": "\/Date(1690000000000)\/", "InPlaceHolds": ["UniH1", "mbx2:1"], "LitigationHoldEnabled": true, "ItemCount": 52149, "CustomAttribute1": "Fabrikam"}}"#
    )
}

fn guid(i: u32) -> String {
    format!("{i:08x}-1111-4111-8111-111111111111")
}

#[test]
fn records_cut_anywhere_read_as_before() {
    // Pretty-printed like ConvertTo-Json, names with multi-byte characters, escapes
    // and numbers: every chunk size cuts a string, an escape, a number or a character
    // somewhere.
    let recs: Vec<String> = (1..=40)
        .map(|i| rec(&guid(i), &format!("Ünïcødé {i} 🙂")))
        .collect();
    let json = format!("\n\t [\r\n    {}\n]\n\n", recs.join(",\r\n    "));
    let ms = same_as_before(json.as_bytes()).unwrap();
    assert_eq!(ms.len(), 40);
    assert_eq!(ms[39].display_name.as_deref(), Some("Ünïcødé 40 🙂"));
    assert!(
        ms.iter()
            .all(|m| m.litigation_hold && m.in_place_holds.len() == 2)
    );
    // In every encoding.
    let bom = [&[0xEF, 0xBB, 0xBF][..], json.as_bytes()].concat();
    assert_eq!(same_as_before(&bom).unwrap(), ms);
    assert_eq!(same_as_before(&utf16le_bom(&json)).unwrap(), ms);
    let no_bom: Vec<u8> = json
        .trim_start()
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    assert_eq!(same_as_before(&no_bom).unwrap(), ms);
    let be: Vec<u8> = [0xFE, 0xFF]
        .into_iter()
        .chain(json.encode_utf16().flat_map(u16::to_be_bytes))
        .collect();
    assert_eq!(same_as_before(&be).unwrap(), ms);
    // More records than a batch, and a record longer than the buffer.
    let many: Vec<String> = (1..=2500).map(|i| rec(&guid(i), "n")).collect();
    let many = format!("[{}]", many.join(","));
    let ms = in_one_piece(many.as_bytes()).unwrap();
    for chunk in [7, 4096, crate::text::CHUNK] {
        assert_eq!(streamed(many.as_bytes(), chunk).unwrap(), ms);
    }
    let long = "x".repeat(3 * crate::text::CHUNK);
    let doc = format!("[{},{}]", rec(&guid(1), &long), rec(&guid(2), "short"));
    for chunk in [7, crate::text::CHUNK] {
        let ms = streamed(doc.as_bytes(), chunk).unwrap();
        assert_eq!(ms[0].display_name.as_deref(), Some(long.as_str()));
        assert_eq!(ms[1].display_name.as_deref(), Some("short"));
    }
}

#[test]
fn envelope_and_single_object_read_as_before() {
    let recs: Vec<String> = (1..=1500).map(|i| rec(&guid(i), "e")).collect();
    for doc in [
        format!(
            r#"{{"@odata.context": "x", "value": [{}], "Count": 1500}}"#,
            recs.join(",")
        ),
        format!(r#"{{"Count": 1500, "VALUE": [{}]}}"#, recs.join(",")),
    ] {
        let ms = in_one_piece(doc.as_bytes()).unwrap();
        assert_eq!(ms.len(), 1500);
        for chunk in [7, 4096, crate::text::CHUNK] {
            assert_eq!(streamed(doc.as_bytes(), chunk).unwrap(), ms);
        }
    }
    for doc in [
        // A `value` that is not an array leaves the object a record of its own.
        format!(
            r#"{{"value": {{"a": [1]}}, "ExchangeGuid": "{}", "DisplayName": "One", "ItemCount": 12345678}}"#,
            guid(7)
        ),
        format!(
            r#"{{"value": 5, "value": [{}, {}], "ExchangeGuid": "{}"}}"#,
            rec(&guid(1), "a"),
            rec(&guid(2), "b"),
            guid(7)
        ),
        format!(
            r#"{{"value": [{}], "value": 7, "Value": "x"}}"#,
            rec(&guid(1), "a")
        ),
        r#"{"value": []}"#.into(),
        r#"{"value": [], "ExchangeGuid": "x"}"#.into(),
    ] {
        same_as_before(doc.as_bytes()).ok();
    }
}

/// Documents broken in the ways a cut, an edit or another tool breaks them.
fn broken_json() -> Vec<String> {
    let g1 = guid(1);
    let ok = rec(&g1, "a");
    vec![
        format!("[{ok} {ok}]"),
        format!("[{ok},]"),
        format!("[\n  {ok},\n  {ok}"),
        format!("[{ok}, {{\"ExchangeGuid\": \"{g1}\""),
        format!("[{ok}]\n x"),
        format!("[{ok}]]"),
        "[1,2]".into(),
        "[123456789012, 2]".into(),
        "[true]".into(),
        "[\"str\\u00e9ing\"]".into(),
        format!("[{ok}, 1]"),
        format!("[{ok}, {{\"exchangeguid\": \"a\", \"ExchangeGUID\": \"b\"}}]"),
        "[{\"a\": tru}]".into(),
        "[{\"a\": \"unterminated}]".into(),
        "[{\"a\": \"\\x\"}]".into(),
        "[{\"a\": 1.}]".into(),
        "[{\"a\": -}]".into(),
        "[{\"a\": 1e}]".into(),
        "[{\"a\": \"\\ud800\"}]".into(),
        "[{\"a\": \"tab\there\"}]".into(),
        "[\n{\n\"a\": [1, 2,]\n}\n]".into(),
        format!("[\n    {ok},\n    {{\n        \"x\": 1,\n    }}\n]"),
        "[{\"a\": 1} , ]".into(),
        "[,]".into(),
        "[ ".into(),
        "[".into(),
        "[{".into(),
        "[{\"a\"".into(),
        "[{\"a\":".into(),
        "[{\"a\" 1}]".into(),
        "[{1: 2}]".into(),
        "{\"value\": [1]}".into(),
        format!("{{\"value\": [{ok}], }}"),
        format!("{{\"value\": [{ok}] \"x\": 1}}"),
        format!("{{\"value\": [{ok},]}}"),
        format!("{{\"value\": [{ok}"),
        "{\"value\": ".into(),
        "{\"value\"".into(),
        "{\"value\" : {\"a\": \"\\ud800\"}}".into(),
        "{\"ExchangeGuid\": ".into(),
        "{\"ExchangeGuid\": \"a\", \"exchangeGUID\": \"b\"}".into(),
        "{\"ExchangeGuid\": \"a\", \"exchangeGUID\" }".into(),
        "{\"ExchangeGuid\": \"a\", \"exchangeGUID\"\n\n  : 1}".into(),
        "{\"ExchangeGuid\": \"a\", \"exchangeGUID\"".into(),
        "{\"ExchangeGuid\": \"a\" \"b\": 1}".into(),
        "{\"ExchangeGuid\": \"a\",}".into(),
        "{\"ExchangeGuid\": \"a\", 1: 2}".into(),
        "{1: 2}".into(),
        "{,}".into(),
        "{".into(),
        "{}".into(),
        "{} {}".into(),
        "[{\"a\": \"\\u12\"}]".into(),
        format!("[{}]", "[".repeat(200)),
        format!("[{{\"x\": {}}}]", "[".repeat(200)),
    ]
}

#[test]
fn json_errors_read_as_before() {
    for doc in broken_json() {
        let e = same_as_before(doc.as_bytes()).unwrap_err();
        assert!(e.contains("JSON") || e.contains("record"), "{doc}: {e}");
        // Pretty-printed over lines, after a first record.
        let pretty = format!("[\n    {},\n    {}", rec(&guid(9), "p"), &doc[1..]);
        same_as_before(pretty.as_bytes()).ok();
    }
}

/// The documents and exports of these tests, cut, spliced and garbled at random places:
/// whatever the result, it is the one the import had before.
#[test]
fn garbled_files_read_as_before() {
    let mut rng = fastrand::Rng::with_seed(16);
    let g = |i| guid(i);
    let mut docs: Vec<Vec<u8>> = broken_json().into_iter().map(String::into_bytes).collect();
    docs.push(format!("[\n    {},\n    {}\n]", rec(&g(1), "a"), rec(&g(2), "b")).into_bytes());
    docs.push(
        format!(
            "{{\"value\": [{}, {}], \"Count\": 2}}",
            rec(&g(1), "a"),
            rec(&g(2), "b")
        )
        .into_bytes(),
    );
    docs.push(rec(&g(3), "one").into_bytes());
    docs.push(
        format!(
            "#TYPE X\r\n\"ExchangeGuid\",\"DisplayName\",\"WhenSoftDeleted\"\r\n\"{}\",\"A, \"\"B\"\"\",\"2023-01-01\"\r\n\"{}\",\"two\r\nlines\",\"\"\r\n",
            g(1),
            g(2)
        )
        .into_bytes(),
    );
    let alphabet = b"{}[],:\"\\ \n\r\t0123456789-+.eEtrufalsn#x\xc3\xa9";
    let base = docs.clone();
    for doc in &base {
        for _ in 0..150 {
            let mut d = doc.clone();
            for _ in 0..rng.usize(1..=3) {
                let at = rng.usize(0..=d.len());
                match rng.u8(0..5) {
                    0 => d.truncate(at),
                    1 => {
                        let end = (at + rng.usize(1..=8)).min(d.len());
                        d.drain(at..end);
                    }
                    2 => d.insert(at, alphabet[rng.usize(0..alphabet.len())]),
                    3 => {
                        let from = rng.usize(0..=d.len());
                        let end = (from + rng.usize(1..=40)).min(d.len());
                        let piece = d[from..end].to_vec();
                        d.splice(at..at, piece);
                    }
                    _ => {
                        if at < d.len() {
                            d[at] = alphabet[rng.usize(0..alphabet.len())];
                        }
                    }
                }
            }
            docs.push(d);
        }
    }
    let mut kinds = std::collections::BTreeSet::new();
    for d in &docs {
        let before = in_one_piece(d);
        kinds.insert(match &before {
            Ok(ms) => format!("{} mailboxes", ms.len()),
            Err(e) => e.split(" at line").next().unwrap_or(e).to_string(),
        });
        for chunk in [1, 3, 16, crate::text::CHUNK] {
            assert_eq!(
                streamed(d, chunk),
                before,
                "chunk {chunk}: {:?}",
                String::from_utf8_lossy(d)
            );
        }
    }
    eprintln!(
        "{} files, {} kinds of result: {kinds:#?}",
        docs.len(),
        kinds.len()
    );
    assert!(kinds.len() > 40, "{kinds:?}");
}

#[test]
fn faults_come_in_the_order_they_did() {
    let (g1, g2) = (guid(1), guid(2));
    // A bad record, then a syntax error: the syntax error.
    let doc = format!(
        r#"[{{"DisplayName": "no guid"}}, {} {}]"#,
        rec(&g1, "a"),
        rec(&g2, "b")
    );
    assert!(
        same_as_before(doc.as_bytes())
            .unwrap_err()
            .contains("expected `,` or `]`")
    );
    // A syntax error, then a byte that is not UTF-8: the encoding.
    let bad = [
        format!("[{} {}]", rec(&g1, "a"), rec(&g2, "b")).as_bytes(),
        b" \xff ",
    ]
    .concat();
    let msg = same_as_before(&bad).unwrap_err();
    assert!(msg.contains(&format!("byte {}", bad.len() - 2)), "{msg}");
    // A bad record, then an encoding fault; in CSV too.
    let bad = [
        format!(r#"[{{"DisplayName": "x"}}, {}]"#, rec(&g1, "a")).as_bytes(),
        b"\xc3",
    ]
    .concat();
    assert!(same_as_before(&bad).unwrap_err().starts_with("not UTF-8"));
    let csv = [
        format!("ExchangeGuid,WhenSoftDeleted\n{g1},someday\n{g2},").as_bytes(),
        b"\xe9t\xe9\n",
    ]
    .concat();
    assert!(same_as_before(&csv).unwrap_err().starts_with("not UTF-8"));
    // UTF-16 with a lone surrogate in it; of odd length too: the length, as before.
    let mut u16 = utf16le_bom(&format!("[{}]", rec(&g1, "a")));
    u16.splice(10..10, [0x00, 0xD8, 0x41, 0x00]);
    assert!(
        same_as_before(&u16)
            .unwrap_err()
            .contains("unpaired surrogate")
    );
    u16.push(0x20);
    assert!(same_as_before(&u16).unwrap_err().contains("odd number"));
    let mut lone_end = utf16le_bom("[1");
    lone_end.extend([0x00, 0xD8]);
    assert!(
        same_as_before(&lone_end)
            .unwrap_err()
            .contains("unpaired surrogate")
    );
    // A duplicate before a bad record names both records of the GUID; a bad record
    // before a duplicate is the one reported.
    let dup = format!(
        "[{}, {}, {}, {{\"DisplayName\": \"x\"}}, {}]",
        rec(&g1, "a"),
        rec(&g2, "b"),
        rec(&g1, "c"),
        rec(&g2, "d")
    );
    assert_eq!(
        same_as_before(dup.as_bytes()).unwrap_err(),
        format!("record 3 None: field ExchangeGuid: {g1} also appears in record 1")
    );
    let bad_first = format!(
        "[{}, {{\"DisplayName\": \"x\"}}, {}]",
        rec(&g1, "a"),
        rec(&g1, "c"),
    );
    assert!(
        same_as_before(bad_first.as_bytes())
            .unwrap_err()
            .starts_with("record 2 None: field ExchangeGuid: missing")
    );
    let csv = format!(
        "ExchangeGuid\r\n{g1}\r\n{g2}\r\n\r\n{g2}\r\n{}\r\n",
        g1.to_uppercase()
    );
    assert_eq!(
        same_as_before(csv.as_bytes()).unwrap_err(),
        format!("record 3 Some(5): field ExchangeGuid: {g2} also appears in record 2")
    );
}

/// The lines of a CSV's records as the whole-file reader numbered them: the csv
/// reader's record positions, moved past the line ends it leaves before a record.
fn lines_in_one_piece(body: &str, skipped: u64) -> Vec<u64> {
    let bytes = body.as_bytes();
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let mut rec = csv::StringRecord::new();
    let mut out = Vec::new();
    while rdr.read_record(&mut rec).unwrap() {
        let mut start = rec.position().unwrap().byte() as usize;
        while matches!(bytes.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        out.push(skipped + 1 + newlines(&bytes[..start]));
    }
    out
}

#[test]
fn csv_lines_count_as_before() {
    let (g1, g2, g3) = (guid(1), guid(2), guid(3));
    let bodies = [
        format!("ExchangeGuid,DisplayName\n{g1},a\n{g2},b\n{g3},c"),
        format!("ExchangeGuid,DisplayName\r\n{g1},a\r\n{g2},b\r\n{g3},c\r\n"),
        format!("ExchangeGuid,DisplayName\r{g1},a\r{g2},b\r\r\r{g3},c\r"),
        format!(
            "\"ExchangeGuid\",\"DisplayName\"\r\n\r\n\"{g1}\",\"two\r\nlines\"\n\n\n\"{g2}\",\"x\"\r\n\"{g3}\",\"\"\"q\"\"\r\n\n\"\r\n"
        ),
    ];
    for body in &bodies {
        for (prefix, skipped) in [("", 0), ("#TYPE X.Y\r\n", 1)] {
            let text = format!("{prefix}{body}");
            let want = lines_in_one_piece(body, skipped);
            assert_eq!(want.len(), 3, "{body:?}");
            for chunk in [1, 2, 3, 7, 1 << 20] {
                let cfg = InventoryConfig::default();
                let wanted = Wanted::new(&cfg);
                let mut each = |_| true;
                let mut records = Records::new(&cfg, &wanted, &mut each);
                let mut dec = DecodeReader::with_chunk(text.as_bytes(), chunk);
                parse_csv(&mut dec, &wanted, &mut records).unwrap();
                assert_eq!(records.lines, want, "{text:?} {chunk}");
            }
            assert_eq!(same_as_before(text.as_bytes()).unwrap().len(), 3);
        }
    }
}

#[test]
fn csv_errors_read_as_before() {
    let (g1, g2) = (guid(1), guid(2));
    for csv in [
        format!("ExchangeGuid,DisplayName\n{g1},a\n{g2}\n"),
        format!("#TYPE x\r\nExchangeGuid,DisplayName\r\n{g1},a\r\n\r\n{g2},b,c\r\n{g1},d\r\n"),
        format!("ExchangeGuid,DisplayName\n{g1},\"a\n{g2},b\n"),
        format!("ExchangeGuid,DisplayName,Other\n{g1},a,b\n{g2},\"cut\nshort"),
        format!("ExchangeGuid,DisplayName,Other\n{g2},x\n{g1},\"cut\nshort"),
        format!("ExchangeGuid,DisplayName,Other\n{g2},x,y\n\"{g1}\",\"\"\"cut"),
        format!("ExchangeGuid,exchangeguid \n{g1},{g2}\n"),
        format!("\"ExchangeGuid,DisplayName\n{g1},x\n"),
        "ExchangeGuid,DisplayName\n".to_string(),
        "ExchangeGuid".to_string(),
        "#TYPE only".to_string(),
        "#TYPE x\n".to_string(),
        "  \r\n\u{a0}#TYPE x\nExchangeGuid,When\n1,2\n".to_string(),
    ] {
        same_as_before(csv.as_bytes()).unwrap_err();
    }
}

#[test]
fn a_sink_that_stops_stops_the_read() {
    let recs: Vec<String> = (1..=3000).map(|i| rec(&guid(i), "s")).collect();
    let cfg = InventoryConfig::default();
    let csv = std::iter::once("ExchangeGuid".to_string())
        .chain((1..=3000).map(guid))
        .collect::<Vec<_>>()
        .join("\n");
    for doc in [
        format!("[{}]", recs.join(",")),
        format!("{{\"value\": [{}]}}", recs.join(",")),
        csv,
    ] {
        let mut batches = 0;
        let mut each = |_| {
            batches += 1;
            batches < 2
        };
        let r = super::parse(doc.as_bytes(), &cfg, &mut each, 4096);
        assert!(matches!(r, Err(Fail::Stopped)), "{r:?}");
        assert_eq!(batches, 2);
    }
}
