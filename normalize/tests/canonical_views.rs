//! Canonical views in `schemas/views/`: structure checks, golden rows on hand-written
//! fixtures, and a smoke run over the developer corpus.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use fhirhose_normalize::conformance::json_rows;
use fhirhose_normalize::CompiledView;
use serde_json::{json, Map, Value as Json};
use simd_json::prelude::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn view_paths() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(repo().join("schemas/views"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

fn load(name: &str) -> CompiledView {
    let bytes = fs::read(repo().join("schemas/views").join(format!("{name}.json"))).unwrap();
    CompiledView::from_json_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs `view` over the fixtures and renders the rows through Arrow.
fn rows(view: &str, resources: &[Json]) -> Vec<Map<String, Json>> {
    let view = load(view);
    let mut b = view.builder();
    for r in resources {
        let mut bytes = serde_json::to_vec(r).unwrap();
        let v = simd_json::to_borrowed_value(&mut bytes).unwrap();
        b.append(&v)
            .unwrap_or_else(|e| panic!("{}: {e}", view.name()));
    }
    let arrays = b.finish();
    json_rows(&view, &arrays)
}

const ONE_ROW_PER_RESOURCE: &[&str] = &[
    "patient",
    "encounter",
    "observation",
    "condition",
    "medication_request",
    "procedure",
    "immunization",
    "allergy_intolerance",
    "diagnostic_report",
    "practitioner",
    "organization",
    "location",
];

#[test]
fn every_canonical_view_is_complete() {
    let paths = view_paths();
    assert!(paths.len() >= 25, "expected at least 25 canonical views");
    let mut names = BTreeMap::new();
    for p in &paths {
        let bytes = fs::read(p).unwrap();
        let raw: Json = serde_json::from_slice(&bytes).unwrap();
        let view = CompiledView::from_json_slice(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let stem = p.file_stem().unwrap().to_str().unwrap();
        assert_eq!(view.name(), stem, "file name matches view name");
        assert_eq!(raw["resourceType"], "ViewDefinition");
        assert!(
            raw["url"].as_str().is_some_and(|u| u.ends_with(stem)),
            "{stem}: url"
        );
        assert_eq!(raw["status"], "active", "{stem}: status");
        assert_eq!(raw["fhirVersion"], json!(["4.0.1"]), "{stem}: fhirVersion");
        assert_eq!(view.fields()[0].name(), "id", "{stem}: first column is id");
        assert_eq!(view.version().len(), 16);
        for f in view.fields() {
            assert!(
                f.metadata().contains_key("fhir.type"),
                "{stem}.{}: every column has a type",
                f.name()
            );
        }
        names.insert(stem.to_owned(), view.resource().to_owned());
    }
    for required in ONE_ROW_PER_RESOURCE.iter().chain(&[
        "patient_name",
        "patient_identifier",
        "patient_address",
        "observation_component",
    ]) {
        assert!(names.contains_key(*required), "missing view {required}");
    }
    // Every *_coding view shares one schema so they can be unioned.
    let coding: Vec<CompiledView> = names
        .keys()
        .filter(|n| n.ends_with("_coding"))
        .map(|n| load(n))
        .collect();
    assert!(coding.len() >= 5);
    for v in &coding {
        assert_eq!(
            v.fields(),
            coding[0].fields(),
            "{} schema differs",
            v.name()
        );
    }
}

fn patient_fixtures() -> Vec<Json> {
    vec![
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "meta": {"lastUpdated": "2024-01-02T03:04:05.678Z"},
            "extension": [
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race", "extension": [
                    {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3", "display": "White"}},
                    {"url": "text", "valueString": "White"}]},
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity", "extension": [
                    {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2186-5", "display": "Not Hispanic or Latino"}},
                    {"url": "text", "valueString": "Not Hispanic or Latino"}]},
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": "F"}
            ],
            "identifier": [
                {"system": "https://example.org/ids", "value": "X-1"},
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}], "text": "MRN"},
                 "system": "http://hospital.example.org", "value": "MRN-77"}
            ],
            "name": [
                {"use": "usual", "given": ["Annie"], "family": "Nick"},
                {"use": "official", "family": "Castañeda", "given": ["Ana", "María"], "prefix": ["Dr."]}
            ],
            "gender": "female",
            "birthDate": "1970-06",
            "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-06-15T08:30:00-05:00"}]},
            "deceasedDateTime": "2020-02-29",
            "multipleBirthInteger": 2,
            "address": [
                {"use": "home", "line": ["1 Main St", "Apt 2"], "city": "Boston", "state": "MA", "postalCode": "02215",
                 "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/geolocation", "extension": [
                    {"url": "latitude", "valueDecimal": 42.25}, {"url": "longitude", "valueDecimal": -71.5}]}]},
                {"use": "old", "city": "Salem"}
            ],
            "communication": [
                {"language": {"coding": [{"code": "en"}]}},
                {"language": {"coding": [{"code": "es"}]}, "preferred": true}
            ],
            "generalPractitioner": [{"reference": "Organization/o9"}, {"reference": "Practitioner/pr1"}]
        }),
        json!({"resourceType": "Patient", "id": "p2"}),
        json!({"resourceType": "Observation", "id": "not-a-patient"}),
    ]
}

#[test]
fn patient_golden() {
    let r = rows("patient", &patient_fixtures());
    assert_eq!(r.len(), 2, "one row per patient, other types skipped");
    let p1 = &r[0];
    assert_eq!(p1["id"], "p1");
    assert_eq!(p1["last_updated"], json!(1_704_164_645_678_000_i64));
    assert_eq!(
        p1["family_name"], "Castañeda",
        "official name wins over the first name"
    );
    assert_eq!(p1["given_names"], "Ana María");
    assert_eq!(p1["birth_date"], "1970-06", "partial date kept exactly");
    assert_eq!(
        p1["birth_time"], "1970-06-15T08:30:00-05:00",
        "primitive extension on _birthDate"
    );
    assert_eq!(p1["deceased_boolean"], Json::Null);
    assert_eq!(p1["deceased_date_time"], "2020-02-29", "choice type");
    assert_eq!(p1["multiple_birth_integer"], 2);
    assert_eq!(p1["multiple_birth_boolean"], Json::Null);
    assert_eq!(p1["race_omb_code"], "2106-3");
    assert_eq!(p1["race_text"], "White");
    assert_eq!(p1["ethnicity_omb_code"], "2186-5");
    assert_eq!(p1["birth_sex"], "F");
    assert_eq!(p1["language_code"], "es", "preferred language first");
    assert_eq!(p1["mrn"], "MRN-77");
    assert_eq!(
        p1["general_practitioner_id"], "pr1",
        "typed reference key skips the Organization"
    );

    let p2 = &r[1];
    assert_eq!(p2["id"], "p2");
    for (k, v) in p2 {
        if k != "id" {
            assert_eq!(*v, Json::Null, "missing field {k} is null");
        }
    }
}

#[test]
fn patient_child_tables_golden() {
    let names = rows("patient_name", &patient_fixtures());
    assert_eq!(names.len(), 2, "one row per name; p2 has none");
    assert_eq!(names[0]["name_index"], 0);
    assert_eq!(names[0]["use"], "usual");
    assert_eq!(names[1]["name_index"], 1);
    assert_eq!(names[1]["given"], json!(["Ana", "María"]));
    assert_eq!(names[1]["prefix"], json!(["Dr."]));
    assert_eq!(
        names[0]["suffix"],
        json!([]),
        "empty collection is an empty list"
    );

    let ids = rows("patient_identifier", &patient_fixtures());
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[1]["type_code"], "MR");
    assert_eq!(ids[1]["value"], "MRN-77");
    assert_eq!(ids[0]["type_code"], Json::Null);

    let addr = rows("patient_address", &patient_fixtures());
    assert_eq!(addr.len(), 2, "one row per address item");
    assert_eq!(addr[0]["line"], json!(["1 Main St", "Apt 2"]));
    assert_eq!(
        addr[0]["latitude"],
        json!(42.25),
        "geolocation extension, decimal"
    );
    assert_eq!(addr[0]["longitude"], json!(-71.5));
    assert_eq!(addr[1]["city"], "Salem");
    assert_eq!(addr[1]["line"], json!([]));
    assert_eq!(addr[1]["latitude"], Json::Null);
}

fn observation_fixtures() -> Vec<Json> {
    let base = |id: &str| {
        json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body Height"}, {"system": "http://snomed.info/sct", "code": "50373000"}], "text": "Height"},
            "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "Encounter/e1"},
            "effectiveDateTime": "2020-01-01T10:00:00+01:00",
            "issued": "2020-01-01T10:00:00.5+01:00"
        })
    };
    let with = |id: &str, k: &str, v: Json| {
        let mut o = base(id);
        o[k] = v;
        o
    };
    let mut bp = base("bp");
    bp["component"] = json!([
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120, "unit": "mm[Hg]"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80.5, "unit": "mm[Hg]"}}
    ]);
    let mut period = base("period");
    period.as_object_mut().unwrap().remove("effectiveDateTime");
    period["effectivePeriod"] = json!({"start": "2020-01", "end": "2020-02"});
    vec![
        with(
            "q",
            "valueQuantity",
            json!({"value": 1.50, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"}),
        ),
        with(
            "cc",
            "valueCodeableConcept",
            json!({"coding": [{"system": "http://snomed.info/sct", "code": "260385009", "display": "Negative"}], "text": "Neg"}),
        ),
        with("s", "valueString", json!("free text")),
        with("b", "valueBoolean", json!(false)),
        bp,
        period,
    ]
}

#[test]
fn observation_golden() {
    let r = rows("observation", &observation_fixtures());
    assert_eq!(r.len(), 6);
    let by_id = |id: &str| r.iter().find(|x| x["id"] == id).unwrap();
    let q = by_id("q");
    assert_eq!(q["value_quantity_value"], json!(1.5));
    assert_eq!(q["value_quantity_unit"], "cm");
    assert_eq!(q["value_quantity_code"], "cm");
    assert_eq!(q["code_code"], "8302-2", "first coding");
    assert_eq!(q["code_text"], "Height");
    assert_eq!(q["category_code"], "vital-signs");
    assert_eq!(q["patient_id"], "p1");
    assert_eq!(q["encounter_id"], "e1");
    assert_eq!(q["effective_date_time"], "2020-01-01T10:00:00+01:00");
    assert_eq!(
        q["issued"],
        json!(1_577_869_200_500_000_i64),
        "instant as UTC micros"
    );
    assert_eq!(q["value_string"], Json::Null);
    let cc = by_id("cc");
    assert_eq!(cc["value_codeable_concept_code"], "260385009");
    assert_eq!(cc["value_codeable_concept_display"], "Negative");
    assert_eq!(cc["value_codeable_concept_text"], "Neg");
    assert_eq!(cc["value_quantity_value"], Json::Null);
    assert_eq!(by_id("s")["value_string"], "free text");
    assert_eq!(by_id("b")["value_boolean"], false);
    assert_eq!(by_id("bp")["component_count"], 2);
    let p = by_id("period");
    assert_eq!(p["effective_date_time"], Json::Null);
    assert_eq!(p["effective_period_start"], "2020-01");

    // The decimal column keeps the decimal's text in Arrow (Utf8), not a float column.
    let view = load("observation");
    let f = view
        .fields()
        .iter()
        .find(|f| f.name() == "value_quantity_value")
        .unwrap();
    assert_eq!(f.data_type(), &arrow_schema::DataType::Utf8);

    let comps = rows("observation_component", &observation_fixtures());
    assert_eq!(comps.len(), 2, "one row per component");
    assert_eq!(comps[0]["id"], "bp");
    assert_eq!(comps[0]["code_code"], "8480-6");
    assert_eq!(comps[0]["value_quantity_value"], json!(120));
    assert_eq!(comps[1]["component_index"], 1);
    assert_eq!(comps[1]["value_quantity_value"], json!(80.5));

    let codings = rows("observation_coding", &observation_fixtures()[..2]);
    // q: code (2 codings) + category (1); cc: code (2) + category (1) + value (1).
    assert_eq!(codings.len(), 7);
    assert!(codings.iter().any(|c| c["id"] == "cc"
        && c["element"] == "value.ofType(CodeableConcept)"
        && c["code"] == "260385009"));
    assert!(codings.iter().any(|c| c["id"] == "q"
        && c["element"] == "code"
        && c["coding_index"] == 1
        && c["system"] == "http://snomed.info/sct"));
}

#[test]
fn medication_request_reads_contained_medication() {
    let fixtures = [
        json!({
            "resourceType": "MedicationRequest", "id": "mr1", "status": "active", "intent": "order",
            "contained": [
                {"resourceType": "Medication", "id": "other", "code": {"coding": [{"code": "nope"}]}},
                {"resourceType": "Medication", "id": "med1", "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1049502", "display": "Oxycodone"}]}}
            ],
            "medicationReference": {"reference": "#med1"},
            "subject": {"reference": "Patient/p1"},
            "authoredOn": "2021-03"
        }),
        json!({
            "resourceType": "MedicationRequest", "id": "mr2", "status": "stopped", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "313820"}], "text": "Acetaminophen"},
            "subject": {"reference": "https://fhir.example.org/r4/Patient/p2/_history/3"}
        }),
    ];
    let r = rows("medication_request", &fixtures);
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[0]["medication_code"], "1049502",
        "contained Medication resolved by #id"
    );
    assert_eq!(r[0]["medication_display"], "Oxycodone");
    assert_eq!(
        r[0]["medication_id"],
        Json::Null,
        "contained reference has no resource key"
    );
    assert_eq!(r[0]["authored_on"], "2021-03");
    assert_eq!(r[1]["medication_code"], "313820");
    assert_eq!(r[1]["medication_text"], "Acetaminophen");
    assert_eq!(r[1]["patient_id"], "p2", "absolute reference with _history");
}

/// Reads a gzip NDJSON corpus file into lines.
fn corpus_lines(path: &Path) -> Vec<Vec<u8>> {
    let f = fs::File::open(path).unwrap();
    BufReader::new(flate2::read::GzDecoder::new(f))
        .split(b'\n')
        .map(Result::unwrap)
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn canonical_views_run_over_the_corpus() {
    let views: Vec<CompiledView> = view_paths()
        .iter()
        .map(|p| CompiledView::from_json_slice(&fs::read(p).unwrap()).unwrap())
        .collect();
    let mut builders: Vec<_> = views.iter().map(CompiledView::builder).collect();
    let mut rows_per_view = vec![0usize; views.len()];
    let mut resources: BTreeMap<String, usize> = BTreeMap::new();
    let mut files: Vec<PathBuf> = fs::read_dir(repo().join("tests/data/corpus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.gz"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in &files {
        for mut line in corpus_lines(file) {
            let v = simd_json::to_borrowed_value(&mut line).unwrap();
            let rt = v
                .get("resourceType")
                .and_then(|r| r.as_str())
                .unwrap()
                .to_owned();
            *resources.entry(rt).or_default() += 1;
            for (i, b) in builders.iter_mut().enumerate() {
                rows_per_view[i] += b
                    .append(&v)
                    .unwrap_or_else(|e| panic!("{} on {}: {e}", views[i].name(), file.display()));
            }
        }
        // Finish per file like the pipeline does; arrays must match the schema.
        for (i, b) in builders.iter_mut().enumerate() {
            let batch = b.finish_batch().unwrap();
            assert_eq!(batch.schema(), views[i].schema());
        }
    }
    assert_eq!(resources.values().sum::<usize>(), 28_695);
    for (i, v) in views.iter().enumerate() {
        let n = resources.get(v.resource()).copied().unwrap_or(0);
        if ONE_ROW_PER_RESOURCE.contains(&v.name()) {
            assert_eq!(
                rows_per_view[i],
                n,
                "{}: one row per {}",
                v.name(),
                v.resource()
            );
        } else if n > 0 && v.name() != "patient_telecom" {
            assert!(
                rows_per_view[i] > 0,
                "{} produced no rows over {n} resources",
                v.name()
            );
        }
    }
    let idx = |name: &str| views.iter().position(|v| v.name() == name).unwrap();
    // Counted independently from the corpus files.
    assert_eq!(
        rows_per_view[idx("patient_name")],
        119,
        "one row per Patient.name"
    );
    assert_eq!(
        rows_per_view[idx("patient_address")],
        100,
        "one row per Patient.address"
    );
    assert_eq!(
        rows_per_view[idx("observation_component")],
        1970,
        "one row per Observation.component"
    );
}

/// A `collection: true` column is a list even when the path finds exactly one item (the
/// single-reference fast path once returned a bare string, which the list column lost).
#[test]
fn collection_columns_keep_a_single_item_as_a_one_element_list() {
    let out = rows(
        "diagnostic_report",
        &[
            json!({"resourceType": "DiagnosticReport", "id": "one",
                   "result": [{"reference": "Observation/o1"}]}),
            json!({"resourceType": "DiagnosticReport", "id": "two",
                   "result": [{"reference": "Observation/o1"}, {"reference": "Observation/o2"}]}),
            json!({"resourceType": "DiagnosticReport", "id": "none"}),
        ],
    );
    let ids: Vec<&Json> = out.iter().map(|r| &r["result_observation_ids"]).collect();
    assert_eq!(ids[0], &json!(["o1"]));
    assert_eq!(ids[1], &json!(["o1", "o2"]));
    assert!(ids[2].is_null() || ids[2] == &json!([]), "{:?}", ids[2]);
}
