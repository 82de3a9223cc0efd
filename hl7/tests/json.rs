//! The JSON view: exact round trip on the example messages, the documented shape, and the
//! example in docs/json.md kept in step with the code.

mod common;

use bytes::Bytes;
use courier_hl7::{Message, from_json, to_json};
use serde_json::{Value, json};

#[test]
fn examples_round_trip_byte_for_byte() {
    for (name, bytes) in common::examples() {
        let m = Message::parse(bytes.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let j = to_json(&m);
        let back = from_json(&j).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back.encode(), m.encode(), "{name}");
        assert_eq!(back.encode(), bytes, "{name}");
        // Through text as well.
        let text = serde_json::to_string(&j).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(from_json(&parsed).unwrap().encode(), bytes, "{name}");
    }
}

/// The messages inside the example lab drop's batch file round-trip too.
#[test]
fn lab_drop_batch_messages_round_trip_byte_for_byte() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab-drop");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = Bytes::from(std::fs::read(entry.unwrap().path()).unwrap());
        let batch = courier_hl7::split_messages(bytes, &Default::default()).unwrap();
        for m in batch.messages {
            let parsed = Message::parse(m.clone()).unwrap();
            assert_eq!(from_json(&to_json(&parsed)).unwrap().encode(), m);
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "lab-drop examples not found in {}",
        dir.display()
    );
}

#[test]
fn example_shape() {
    let (_, bytes) = common::examples()
        .into_iter()
        .find(|(n, _)| n == "adt_a04_sarah.hl7")
        .unwrap();
    let j = to_json(&Message::parse(bytes).unwrap());
    assert_eq!(j["delimiters"], "|^~\\&");
    let segs = j["segments"].as_array().unwrap();
    assert_eq!(segs[0]["id"], "MSH");
    assert_eq!(segs[0]["fields"]["1"], "|");
    assert_eq!(segs[0]["fields"]["2"], "^~\\&");
    assert_eq!(
        segs[0]["fields"]["9"],
        json!([{"1": "ADT", "2": "A04", "3": "ADT_A01"}])
    );
    let pid = segs.iter().find(|s| s["id"] == "PID").unwrap();
    assert_eq!(
        pid["fields"]["3"],
        json!([
            {"1": "100234", "4": "RIVERSIDE", "5": "MR"},
            {"1": "555-23-4411", "4": "USSSA", "5": "SS"},
            {"1": "RS48821", "4": "ACMEHEALTH", "5": "MB"}
        ])
    );
    assert_eq!(pid["fields"]["1"], json!(["1"]));
    assert!(
        pid["fields"].get("2").is_none(),
        "empty fields are left out"
    );
}

/// The ER7 and JSON shown in docs/json.md correspond, both ways.
#[test]
fn docs_example_is_accurate() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/json.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let block = |lang: &str| -> String {
        let start = doc.find(&format!("```{lang}\n")).unwrap() + lang.len() + 4;
        let end = start + doc[start..].find("```").unwrap();
        doc[start..end].to_string()
    };
    let er7 = block("hl7").trim_end().replace('\n', "\r") + "\r";
    let m = Message::parse(Bytes::from(er7.clone())).unwrap();
    let documented: Value = serde_json::from_str(&block("json")).unwrap();
    assert_eq!(to_json(&m), documented);
    assert_eq!(
        &from_json(&documented).unwrap().encode()[..],
        er7.as_bytes()
    );
}
