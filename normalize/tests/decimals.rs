//! Exact decimals: lines prepared with `prepare_line` keep their source text (`1.50`) in
//! every column, and the marked strings behave as decimals everywhere in FHIRPath.

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::Array;
use fhirhose_normalize::{prepare_line, CompiledView};
use serde_json::json;

const RESOURCE: &str = r#"{"resourceType":"Observation","id":"o1","status":"final",
 "valueQuantity":{"value":1.50,"unit":"mg","code":"mg"},
 "component":[{"valueDecimal":-0.0},{"valueDecimal":1e3},{"valueInteger":7},{"valueString":"2.50"}],
 "note":[{"text":"dose 1.50 \"as\" written"}]}"#;

/// Evaluates `path` columns over `RESOURCE`, prepared or not; returns the columns' values
/// rendered as text (null as `None`).
fn eval(columns: serde_json::Value, prepared: bool) -> Vec<Option<String>> {
    let view = CompiledView::from_json_slice(
        &serde_json::to_vec(&json!({
            "resourceType": "ViewDefinition", "resource": "Observation", "name": "t",
            "select": [{"column": columns}]
        }))
        .unwrap(),
    )
    .unwrap();
    let line = RESOURCE.replace('\n', "");
    let mut buf = Vec::new();
    if prepared {
        prepare_line(line.as_bytes(), &mut buf);
    } else {
        buf.extend_from_slice(line.as_bytes());
    }
    let v = simd_json::to_borrowed_value(&mut buf).unwrap();
    let mut b = view.builder();
    assert_eq!(b.append(&v).unwrap(), 1);
    b.finish()
        .iter()
        .map(|a| {
            if a.is_null(0) {
                return None;
            }
            Some(match a.data_type() {
                arrow_schema::DataType::Boolean => a.as_boolean().value(0).to_string(),
                arrow_schema::DataType::Int64 => a.as_primitive::<Int64Type>().value(0).to_string(),
                _ => a.as_string::<i32>().value(0).to_owned(),
            })
        })
        .collect()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[test]
fn decimal_columns_keep_the_source_text() {
    let cols = json!([
        {"name": "v", "path": "value.ofType(Quantity).value", "type": "decimal"},
        {"name": "vs", "path": "value.ofType(Quantity).value", "type": "string"},
        {"name": "z", "path": "component[0].value.ofType(decimal)", "type": "decimal"},
        {"name": "e", "path": "component[1].value", "type": "decimal"},
        {"name": "i", "path": "component[2].value", "type": "decimal"},
        {"name": "q", "path": "value.ofType(Quantity)", "type": "string"},
        {"name": "note", "path": "note.text", "type": "string"}
    ]);
    assert_eq!(
        eval(cols.clone(), true),
        [
            s("1.50"),
            s("1.50"),
            s("-0.0"),
            s("1e3"),
            s("7"),
            s(r#"{"value":1.50,"unit":"mg","code":"mg"}"#),
            s(r#"dose 1.50 "as" written"#)
        ]
    );
    // Unprepared: the f64 path still works, with the shortest round-trip text.
    assert_eq!(
        eval(cols, false),
        [
            s("1.5"),
            s("1.5"),
            s("-0.0"),
            s("1000.0"),
            s("7"),
            s(r#"{"value":1.5,"unit":"mg","code":"mg"}"#),
            s(r#"dose 1.50 "as" written"#)
        ]
    );
}

#[test]
fn marked_decimals_behave_as_decimals_in_fhirpath() {
    let cols = json!([
        {"name": "gt", "path": "value.ofType(Quantity).value > 1.4", "type": "boolean"},
        {"name": "eq", "path": "value.ofType(Quantity).value = 1.5", "type": "boolean"},
        {"name": "eqi", "path": "component[1].value = 1000", "type": "boolean"},
        {"name": "add", "path": "value.ofType(Quantity).value + 1", "type": "decimal"},
        {"name": "isdec", "path": "value.ofType(Quantity).value is decimal", "type": "boolean"},
        {"name": "isstr", "path": "value.ofType(Quantity).value is string", "type": "boolean"},
        {"name": "oftype", "path": "value.ofType(Quantity).value.ofType(string).count()", "type": "integer"},
        {"name": "str", "path": "value.ofType(Quantity).value.toString()", "type": "string"},
        {"name": "todec", "path": "value.ofType(Quantity).value.toDecimal()", "type": "decimal"},
        {"name": "low", "path": "value.ofType(Quantity).value.lowBoundary()", "type": "decimal"},
        {"name": "high", "path": "value.ofType(Quantity).value.highBoundary()", "type": "decimal"},
        {"name": "strnum", "path": "component[3].value.ofType(string)", "type": "string"},
        {"name": "strcmp", "path": "component[3].value.ofType(string) = '2.50'", "type": "boolean"},
        {"name": "int", "path": "component[1].value", "type": "integer"}
    ]);
    let prepared = eval(cols.clone(), true);
    assert_eq!(
        prepared,
        [
            s("true"),
            s("true"),
            s("true"),
            s("2.5"),
            s("true"),
            s("false"),
            s("0"),
            s("1.50"),
            s("1.50"),
            s("1.495"),
            s("1.505"),
            s("2.50"),
            s("true"),
            s("1000")
        ]
    );
    // The unprepared engine agrees except where the f64 lost the source precision.
    let plain = eval(cols, false);
    for (i, (p, q)) in prepared.iter().zip(&plain).enumerate() {
        match i {
            7 | 8 => assert_eq!(q.as_deref(), Some("1.5")),
            9 => assert_eq!(q.as_deref(), Some("1.45")),
            10 => assert_eq!(q.as_deref(), Some("1.55")),
            _ => assert_eq!(p, q, "column {i}"),
        }
    }
}

#[test]
fn marked_decimals_are_never_keys() {
    let view = CompiledView::from_json_slice(
        &serde_json::to_vec(&json!({
            "resource": "Observation", "name": "k",
            "select": [{"column": [
                {"name": "id", "path": "getResourceKey()", "type": "id"},
                {"name": "p", "path": "subject.getReferenceKey()", "type": "string"},
                {"name": "e", "path": "encounter.getReferenceKey(Encounter)", "type": "string"}
            ]}]
        }))
        .unwrap(),
    )
    .unwrap();
    for prepared in [false, true] {
        let line = br#"{"resourceType":"Observation","id":1.5,"subject":{"reference":2.5},"encounter":{"reference":"Encounter/e1"}}"#;
        let mut buf = Vec::new();
        if prepared {
            prepare_line(line, &mut buf);
        } else {
            buf.extend_from_slice(line);
        }
        let v = simd_json::to_borrowed_value(&mut buf).unwrap();
        let mut b = view.builder();
        assert_eq!(b.append(&v).unwrap(), 1);
        let cols = b.finish();
        assert!(
            cols[0].is_null(0) && cols[1].is_null(0),
            "prepared: {prepared}"
        );
        assert_eq!(cols[2].as_string::<i32>().value(0), "e1");
    }
}
