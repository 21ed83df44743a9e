//! CompiledView API contract: validation messages, Arrow types, all-or-nothing appends.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::Array;
use arrow_schema::{DataType, TimeUnit};
use fhirhose_normalize::{CompiledView, EvalError, ViewError};
use serde_json::json;

fn compile(v: serde_json::Value) -> Result<CompiledView, ViewError> {
    CompiledView::from_json_slice(&serde_json::to_vec(&v).unwrap())
}

fn parse(r: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(r).unwrap()
}

#[test]
fn compiled_view_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledView>();
    assert_send_sync::<Arc<CompiledView>>();
}

#[test]
fn errors_name_the_offending_element() {
    let err = compile(json!({
        "resource": "Patient",
        "select": [
            {"column": [{"name": "id", "path": "id"}]},
            {"column": [{"name": "bad", "path": "name.where("}]}
        ]
    }))
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("select[1].column[0].path: invalid FHIRPath"),
        "{msg}"
    );

    let cases = [
        (
            json!({"select": [{"column": [{"name": "id", "path": "id"}]}]}),
            "resource: is required",
        ),
        (json!({"resource": "Patient"}), "select: is required"),
        (
            json!({"resource": "Patient", "select": [{"forEach": 1}]}),
            "select[0].forEach: must be a FHIRPath string",
        ),
        (
            json!({"resource": "Patient", "select": [{"column": [{"name": "a b", "path": "id"}]}]}),
            "select[0].column[0].name",
        ),
        (
            json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}, {"name": "a", "path": "id"}]}]}),
            "column name `a` is used more than once",
        ),
        (
            json!({"resource": "Patient", "select": [{"unionAll": [
                {"column": [{"name": "a", "path": "id"}]},
                {"column": [{"name": "b", "path": "id"}]}]}]}),
            "select[0].unionAll[1]: columns (b) do not match the first unionAll branch (a)",
        ),
        (
            json!({"resource": "Patient", "constant": [{"name": "c"}], "select": [{"column": [{"name": "a", "path": "%c"}]}]}),
            "constant[0]: has no value[x]",
        ),
        (
            json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "%nope"}]}]}),
            "select[0].column[0].path: invalid FHIRPath: undefined constant %nope",
        ),
        (
            json!({"resource": "Patient", "where": [{"path": "active and"}], "select": [{"column": [{"name": "a", "path": "id"}]}]}),
            "where[0].path: invalid FHIRPath",
        ),
    ];
    for (view, want) in cases {
        let msg = compile(view.clone()).unwrap_err().to_string();
        assert!(msg.contains(want), "{view}: got {msg:?}, want {want:?}");
    }
    assert!(matches!(
        CompiledView::from_json_slice(b"{not json"),
        Err(ViewError::Json(_))
    ));
}

#[test]
fn arrow_types_follow_the_mapping() {
    let view = compile(json!({
        "name": "t", "resource": "Observation",
        "select": [{"column": [
            {"name": "b", "path": "true", "type": "boolean"},
            {"name": "i", "path": "1", "type": "integer"},
            {"name": "u", "path": "2", "type": "unsignedInt"},
            {"name": "d", "path": "value.ofType(Quantity).value", "type": "decimal"},
            {"name": "ts", "path": "issued", "type": "instant"},
            {"name": "dt", "path": "effective.ofType(dateTime)", "type": "dateTime"},
            {"name": "s", "path": "status"},
            {"name": "l", "path": "category.coding.code", "type": "code", "collection": true}
        ]}]
    }))
    .unwrap();
    let types: Vec<DataType> = view
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    assert_eq!(types[0], DataType::Boolean);
    assert_eq!(types[1], DataType::Int64);
    assert_eq!(types[2], DataType::Int64);
    assert_eq!(types[3], DataType::Utf8);
    assert_eq!(
        types[4],
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(types[5], DataType::Utf8);
    assert_eq!(types[6], DataType::Utf8);
    assert!(matches!(&types[7], DataType::List(f) if f.data_type() == &DataType::Utf8));
    assert_eq!(view.name(), "t");
    assert_eq!(view.resource(), "Observation");

    let mut b = view.builder();
    let mut bytes = parse(&json!({
        "resourceType": "Observation", "status": "final",
        "valueQuantity": {"value": 1.0},
        "issued": "2020-01-01T00:00:00.25+01:00",
        "effectiveDateTime": "2020-01",
        "category": [{"coding": [{"code": "a"}, {"code": "b"}]}]
    }));
    let v = simd_json::to_borrowed_value(&mut bytes).unwrap();
    assert_eq!(b.append(&v).unwrap(), 1);
    let batch = b.finish_batch().unwrap();
    assert_eq!(batch.schema(), view.schema());
    assert_eq!(batch.column(1).as_primitive::<Int64Type>().value(0), 1);
    assert_eq!(
        batch.column(3).as_string::<i32>().value(0),
        "1.0",
        "decimal keeps its fraction digit"
    );
    assert_eq!(
        batch
            .column(4)
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        1_577_833_200_250_000,
        "instant converted to UTC"
    );
    assert_eq!(
        batch.column(5).as_string::<i32>().value(0),
        "2020-01",
        "partial dateTime kept"
    );
    let list = batch.column(7).as_list::<i32>().value(0);
    assert_eq!(list.len(), 2);
    assert_eq!(b.len(), 0, "finish resets");
}

#[test]
fn append_is_all_or_nothing() {
    let view = compile(json!({
        "resource": "Patient",
        "select": [
            {"column": [{"name": "id", "path": "id"}]},
            {"forEach": "name", "column": [{"name": "given", "path": "given"}]}
        ]
    }))
    .unwrap();
    let mut b = view.builder();
    let mut ok = parse(
        &json!({"resourceType": "Patient", "id": "a", "name": [{"given": ["x"]}, {"given": ["y"]}]}),
    );
    let mut bad = parse(
        &json!({"resourceType": "Patient", "id": "b", "name": [{"given": ["x"]}, {"given": ["y", "z"]}]}),
    );
    let mut other = parse(&json!({"resourceType": "Observation", "id": "o"}));
    assert_eq!(
        b.append(&simd_json::to_borrowed_value(&mut ok).unwrap())
            .unwrap(),
        2
    );
    let err = b
        .append(&simd_json::to_borrowed_value(&mut bad).unwrap())
        .unwrap_err();
    assert!(
        matches!(err, EvalError::NotSingleton { ref column, count: 2 } if column == "given"),
        "{err}"
    );
    assert_eq!(b.len(), 2, "the failed resource added nothing");
    assert_eq!(
        b.append(&simd_json::to_borrowed_value(&mut other).unwrap())
            .unwrap(),
        0
    );
    let cols = b.finish();
    assert_eq!(cols[0].len(), 2);
    assert_eq!(cols[1].len(), 2);
    assert_eq!(cols[0].as_string::<i32>().value(1), "a");
}

#[test]
fn instant_columns_reject_malformed_values() {
    let view = compile(json!({"resource": "Patient", "select": [{"column": [
        {"name": "t", "path": "meta.lastUpdated", "type": "instant"}]}]}))
    .unwrap();
    let mut b = view.builder();
    let mut bytes =
        parse(&json!({"resourceType": "Patient", "meta": {"lastUpdated": "2020-01-01"}}));
    let err = b
        .append(&simd_json::to_borrowed_value(&mut bytes).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("column `t`"), "{err}");
}

#[test]
fn version_is_a_hash_of_the_bytes() {
    let a = CompiledView::from_json_slice(
        br#"{"resource":"Patient","select":[{"column":[{"name":"id","path":"id"}]}]}"#,
    )
    .unwrap();
    let b = CompiledView::from_json_slice(
        br#"{"resource": "Patient","select":[{"column":[{"name":"id","path":"id"}]}]}"#,
    )
    .unwrap();
    assert_eq!(a.version().len(), 16);
    assert!(a.version().chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a.version(), b.version(), "any byte change is a new version");
    assert_eq!(
        a.name(),
        "patient",
        "name defaults to the lower-cased resource type"
    );
}

/// Random expressions evaluated over a rich resource: errors are fine, panics are not.
#[test]
fn random_expressions_never_panic() {
    const PIECES: &[&str] = &[
        "name",
        "given",
        "family",
        "extension('u')",
        "value",
        "ofType(string)",
        "ofType(Quantity)",
        "first()",
        "last()",
        "where(use = 'official')",
        "exists()",
        "empty()",
        "not()",
        "count()",
        "join(',')",
        "lowBoundary()",
        "highBoundary()",
        "getResourceKey()",
        "getReferenceKey()",
        "getReferenceKey(Patient)",
        "birthDate",
        "_birthDate",
        "id",
        "[0]",
        "[5]",
        "select(given)",
        "distinct()",
        "toString()",
        "iif(true, 1, 2)",
        "contained",
        "link.other",
        "substring(1, 2)",
        "upper()",
        "length()",
        "skip(1)",
        "take(-1)",
        "tail()",
        "indexOf('a')",
        "replace('', 'x')",
        "toInteger()",
        "toDecimal()",
        "'2020-01'",
        "@2020-01-01T10:00:00Z",
        "@T10:00",
    ];
    const OPS: &[&str] = &[
        " = ",
        " != ",
        " and ",
        " or ",
        " xor ",
        " implies ",
        " + ",
        " - ",
        " * ",
        " / ",
        " & ",
        " | ",
        " < ",
        " >= ",
        " div ",
        " mod ",
        " in ",
        " contains ",
    ];
    let resource = json!({
        "resourceType": "Patient", "id": "p1",
        "extension": [{"url": "u", "valueString": "s"}, {"url": "u", "valueQuantity": {"value": 1.5}}],
        "name": [{"use": "official", "family": "F", "given": ["a", "b"]}, {"given": ["c"]}],
        "birthDate": "1970-06", "_birthDate": {"extension": [{"url": "u", "valueInteger": 3}]},
        "link": [{"other": {"reference": "Patient/p2"}}],
        "contained": [{"resourceType": "Patient", "id": "c1"}],
        "multipleBirthInteger": 9223372036854775807_i64
    });
    let mut state: u64 = 42;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut compiled = 0;
    for _ in 0..3_000 {
        let mut path = String::new();
        for i in 0..(1 + next() % 6) {
            if i > 0 {
                if next() % 3 == 0 {
                    path.push_str(OPS[(next() % OPS.len() as u64) as usize]);
                } else {
                    path.push('.');
                }
            }
            path.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
        }
        let collection = next() % 2 == 0;
        let Ok(view) = compile(json!({"resource": "Patient", "select": [
            {"forEachOrNull": "name", "column": [{"name": "c", "path": path, "collection": collection}]}]}))
        else {
            continue;
        };
        compiled += 1;
        let mut b = view.builder();
        let mut bytes = parse(&resource);
        let _ = b.append(&simd_json::to_borrowed_value(&mut bytes).unwrap());
        let cols = b.finish();
        assert_eq!(cols.len(), 1);
    }
    assert!(
        compiled > 1_000,
        "most generated expressions should compile ({compiled})"
    );
}

#[test]
fn runaway_cross_joins_are_rejected() {
    let view = compile(json!({"resource": "Patient", "select": [
        {"forEach": "name", "column": [{"name": "a", "path": "family"}]},
        {"forEach": "name", "column": [{"name": "b", "path": "family"}]},
        {"forEach": "name", "column": [{"name": "c", "path": "family"}]}
    ]}))
    .unwrap();
    let names: Vec<serde_json::Value> = (0..101)
        .map(|i| json!({"family": format!("f{i}")}))
        .collect();
    let mut bytes = parse(&json!({"resourceType": "Patient", "name": names}));
    let mut b = view.builder();
    let err = b
        .append(&simd_json::to_borrowed_value(&mut bytes).unwrap())
        .unwrap_err();
    assert!(matches!(err, EvalError::TooManyRows { .. }), "{err}");
    assert_eq!(b.len(), 0);

    // Duplicate repeat paths double the traversal per level; the node cap stops it.
    let view = compile(json!({"resource": "Questionnaire", "select": [
        {"repeat": ["item", "item"], "column": [{"name": "l", "path": "linkId"}]}]}))
    .unwrap();
    let mut q = json!({"linkId": "leaf"});
    for _ in 0..40 {
        q = json!({"linkId": "x", "item": [q]});
    }
    let mut bytes = parse(&json!({"resourceType": "Questionnaire", "item": [q]}));
    let err = view
        .builder()
        .append(&simd_json::to_borrowed_value(&mut bytes).unwrap())
        .unwrap_err();
    assert!(matches!(err, EvalError::TooManyRows { .. }), "{err}");
}

#[test]
fn temporal_comparisons_follow_fhirpath() {
    let view = compile(json!({"resource": "Observation", "select": [{"column": [
        {"name": "same_instant", "path": "effective.ofType(dateTime) = @2020-01-01T10:00:00+01:00", "type": "boolean"},
        {"name": "after_2019", "path": "effective.ofType(dateTime) > @2019", "type": "boolean"},
        {"name": "unknown", "path": "@2020-01 = @2020-01-15", "type": "boolean"},
        {"name": "partial_issued", "path": "issued < @2021-06-01", "type": "boolean"},
        {"name": "time_lt", "path": "value.ofType(time) < @T12:00", "type": "boolean"}
    ]}]}))
    .unwrap();
    let mut bytes = parse(&json!({
        "resourceType": "Observation",
        "effectiveDateTime": "2020-01-01T09:00:00Z",
        "issued": "2021-05-31T23:00:00.000Z",
        "valueTime": "11:59:59"
    }));
    let mut b = view.builder();
    b.append(&simd_json::to_borrowed_value(&mut bytes).unwrap())
        .unwrap();
    let rows = fhirhose_normalize::conformance::json_rows(&view, &b.finish());
    assert_eq!(
        rows[0]["same_instant"],
        json!(true),
        "time zones are normalised"
    );
    assert_eq!(rows[0]["after_2019"], json!(true));
    assert_eq!(
        rows[0]["unknown"],
        json!(null),
        "different precisions give no answer"
    );
    assert_eq!(rows[0]["partial_issued"], json!(true));
    assert_eq!(rows[0]["time_lt"], json!(true));
}

#[test]
fn string_and_collection_functions() {
    let view = compile(json!({"resource": "Patient", "select": [{"column": [
        {"name": "upper", "path": "name.family.first().upper()"},
        {"name": "lower", "path": "'AbC'.lower()"},
        {"name": "len", "path": "name.family.first().length()", "type": "integer"},
        {"name": "sub", "path": "'Castañeda'.substring(4, 3)"},
        {"name": "sub_out", "path": "'abc'.substring(5)"},
        {"name": "rep", "path": "'a-b-c'.replace('-', '+')"},
        {"name": "idx", "path": "'abcdef'.indexOf('cd')", "type": "integer"},
        {"name": "int", "path": "'42'.toInteger()", "type": "integer"},
        {"name": "dec", "path": "'1.5'.toDecimal()", "type": "decimal"},
        {"name": "tail", "path": "name.given.tail()", "collection": true},
        {"name": "skip", "path": "name.given.skip(2)", "collection": true},
        {"name": "take", "path": "name.given.take(2)", "collection": true},
        {"name": "traced", "path": "name.given.trace('x').count()", "type": "integer"}
    ]}]}))
    .unwrap();
    let mut bytes = parse(
        &json!({"resourceType": "Patient", "name": [{"family": "Ng", "given": ["a", "b", "c"]}]}),
    );
    let mut b = view.builder();
    b.append(&simd_json::to_borrowed_value(&mut bytes).unwrap())
        .unwrap();
    let r = &fhirhose_normalize::conformance::json_rows(&view, &b.finish())[0];
    assert_eq!(r["upper"], "NG");
    assert_eq!(r["lower"], "abc");
    assert_eq!(r["len"], 2);
    assert_eq!(
        r["sub"],
        "aññ".replace("ññ", "ñe"),
        "substring counts characters"
    );
    assert_eq!(r["sub_out"], json!(null));
    assert_eq!(r["rep"], "a+b+c");
    assert_eq!(r["idx"], 2);
    assert_eq!(r["int"], 42);
    assert_eq!(r["dec"], json!(1.5));
    assert_eq!(r["tail"], json!(["b", "c"]));
    assert_eq!(r["skip"], json!(["c"]));
    assert_eq!(r["take"], json!(["a", "b"]));
    assert_eq!(r["traced"], 3);
}
