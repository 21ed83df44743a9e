//! Deterministic synthetic FHIR R4 data.
//!
//! The generator produces realistic shapes (US Core-like Patients with race/ethnicity
//! extensions, several given names, MRN and SSN-like identifiers; Encounters; vital-sign,
//! blood-pressure panel (with `component`), laboratory and social-history Observations
//! using `valueQuantity`, `valueCodeableConcept`, `valueString` and `valueBoolean`;
//! Conditions, MedicationRequests, Procedures, Immunizations, AllergyIntolerances,
//! DiagnosticReports referencing their lab results; and the Practitioners,
//! Organizations and Locations those point at). Every resource has an `id`,
//! `meta.versionId` and `meta.lastUpdated` (an `instant`).
//!
//! Contract:
//! - the same seed produces the same bytes, on every platform and every release of our
//!   dependencies (the RNG is our own SplitMix64);
//! - patient `i`'s resources depend only on the seed and `i`, not on how many patients are
//!   generated, so a bigger data set is a superset of a smaller one;
//! - generation streams: memory stays bounded by one resource, whatever the size; JSON is
//!   written directly (no `serde_json::Value`), so release builds produce hundreds of MB/s.
//!
//! ```
//! use fhirhose_sandbox::generate::Generator;
//! let mut lines = 0;
//! Generator::new(42).for_each_resource(2, |resource_type, line| {
//!     assert!(!line.contains(&b'\n'));
//!     if resource_type == "Patient" { lines += 1; }
//! });
//! assert_eq!(lines, 2);
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use crate::rng::{fmt_date, fmt_datetime, fmt_instant_ms, SplitMix64};

/// Every resource type the generator emits, in emission order of first appearance.
pub const RESOURCE_TYPES: &[&str] = &[
    "Organization",
    "Location",
    "Practitioner",
    "Patient",
    "Encounter",
    "Observation",
    "DiagnosticReport",
    "Condition",
    "MedicationRequest",
    "Procedure",
    "Immunization",
    "AllergyIntolerance",
];

/// Shared resources: fixed counts so that patient `i` is independent of the patient count.
const ORGANIZATIONS: u64 = 4;
const LOCATIONS: u64 = 8;
const PRACTITIONERS: u64 = 12;

const TAG_ORG: u64 = 1;
const TAG_LOC: u64 = 2;
const TAG_PRACT: u64 = 3;
const TAG_PATIENT: u64 = 4;

/// 2016-01-01T00:00:00Z: `meta.lastUpdated` values fall in [this, this + 9 years), i.e.
/// before 2025, so they are in the past on any machine with a sane clock and an export
/// with `_since` = a fresh `transactionTime` sees only what the test touched.
const LAST_UPDATED_BASE_S: i64 = 1_451_606_400;
const LAST_UPDATED_SPAN_S: i64 = 9 * 365 * 86_400;
/// 2012-01-01: clinical dates (encounters) fall in [this, this + ~13 years).
const CLINICAL_BASE_S: i64 = 1_325_376_000;
const CLINICAL_SPAN_S: i64 = 13 * 365 * 86_400;

macro_rules! w {
    ($o:expr, $($t:tt)*) => {{ let _ = write!($o, $($t)*); }};
}

/// One NDJSON file written by [`Generator::write_ndjson_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GeneratedFile {
    /// FHIR resource type of every line.
    pub resource_type: String,
    /// `<dir>/<ResourceType>.ndjson`.
    pub path: PathBuf,
    /// Number of resources (lines).
    pub lines: u64,
    /// File size in bytes, newlines included.
    pub bytes: u64,
}

/// Deterministic synthetic FHIR R4 generator. See the module docs for the contract.
#[derive(Debug)]
pub struct Generator {
    seed: u64,
    out: String,
}

struct Shared {
    orgs: Vec<String>,
    locs: Vec<String>,
    practs: Vec<String>,
}

impl Generator {
    /// A generator whose output depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            out: String::with_capacity(8 * 1024),
        }
    }

    /// Calls `f(resource_type, json_line)` for every resource of `patients` patients (plus
    /// the shared Organizations, Locations and Practitioners, emitted first). Lines carry no
    /// trailing newline.
    pub fn for_each_resource(&mut self, patients: usize, mut f: impl FnMut(&str, &[u8])) {
        let shared = Shared {
            orgs: (0..ORGANIZATIONS)
                .map(|i| uuid(&mut SplitMix64::derive(self.seed, TAG_ORG, i)))
                .collect(),
            locs: (0..LOCATIONS)
                .map(|i| uuid(&mut SplitMix64::derive(self.seed, TAG_LOC, i)))
                .collect(),
            practs: (0..PRACTITIONERS)
                .map(|i| uuid(&mut SplitMix64::derive(self.seed, TAG_PRACT, i)))
                .collect(),
        };
        for i in 0..ORGANIZATIONS {
            let mut r = SplitMix64::derive(self.seed, TAG_ORG, i);
            let id = uuid(&mut r);
            self.out.clear();
            organization(&mut self.out, &mut r, &id, i);
            f("Organization", self.out.as_bytes());
        }
        for i in 0..LOCATIONS {
            let mut r = SplitMix64::derive(self.seed, TAG_LOC, i);
            let id = uuid(&mut r);
            self.out.clear();
            location(
                &mut self.out,
                &mut r,
                &id,
                &shared.orgs[(i % ORGANIZATIONS) as usize],
            );
            f("Location", self.out.as_bytes());
        }
        for i in 0..PRACTITIONERS {
            let mut r = SplitMix64::derive(self.seed, TAG_PRACT, i);
            let id = uuid(&mut r);
            self.out.clear();
            practitioner(&mut self.out, &mut r, &id);
            f("Practitioner", self.out.as_bytes());
        }
        for i in 0..patients as u64 {
            let mut r = SplitMix64::derive(self.seed, TAG_PATIENT, i);
            patient_bundle(&mut self.out, &mut r, &shared, i, &mut f);
        }
    }

    /// Writes `<dir>/<ResourceType>.ndjson` for every type, streaming (one buffered writer
    /// per type), and returns what was written, sorted by resource type.
    pub fn write_ndjson_dir(
        &mut self,
        dir: &Path,
        patients: usize,
    ) -> io::Result<Vec<GeneratedFile>> {
        std::fs::create_dir_all(dir)?;
        let mut files: BTreeMap<String, (BufWriter<File>, PathBuf, u64, u64)> = BTreeMap::new();
        let mut err: Option<io::Error> = None;
        self.for_each_resource(patients, |ty, line| {
            if err.is_some() {
                return;
            }
            if !files.contains_key(ty) {
                let path = dir.join(format!("{ty}.ndjson"));
                match File::create(&path) {
                    Ok(file) => {
                        files.insert(
                            ty.to_owned(),
                            (BufWriter::with_capacity(256 * 1024, file), path, 0, 0),
                        );
                    }
                    Err(e) => {
                        err = Some(e);
                        return;
                    }
                }
            }
            let Some(entry) = files.get_mut(ty) else {
                return;
            };
            if let Err(e) = entry
                .0
                .write_all(line)
                .and_then(|()| entry.0.write_all(b"\n"))
            {
                err = Some(e);
                return;
            }
            entry.2 += 1;
            entry.3 += line.len() as u64 + 1;
        });
        if let Some(e) = err {
            return Err(e);
        }
        let mut out = Vec::with_capacity(files.len());
        for (ty, (mut w, path, lines, bytes)) in files {
            w.flush()?;
            out.push(GeneratedFile {
                resource_type: ty,
                path,
                lines,
                bytes,
            });
        }
        Ok(out)
    }
}

fn uuid(r: &mut SplitMix64) -> String {
    let a = r.next_u64();
    let b = r.next_u64();
    // Version 4 / variant 1 bits, so the ids look like the UUIDs real servers emit.
    let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

fn meta(o: &mut String, r: &mut SplitMix64) {
    let version = 1 + r.below(3);
    let ms = (LAST_UPDATED_BASE_S + r.range(0, LAST_UPDATED_SPAN_S)) * 1000 + r.range(0, 999);
    w!(
        o,
        r#""meta":{{"versionId":"{version}","lastUpdated":"{}"}}"#,
        fmt_instant_ms(ms)
    );
}

fn coding(o: &mut String, system: &str, code: &str, display: &str) {
    w!(
        o,
        r#"{{"system":"{system}","code":"{code}","display":"{display}"}}"#
    );
}

fn concept(o: &mut String, system: &str, code: &str, display: &str) {
    o.push_str(r#"{"coding":["#);
    coding(o, system, code, display);
    w!(o, r#"],"text":"{display}"}}"#);
}

fn reference(o: &mut String, field: &str, ty: &str, id: &str) {
    w!(o, r#""{field}":{{"reference":"{ty}/{id}"}}"#);
}

const MALE: &[&str] = &[
    "James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas",
    "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Luis", "Hiroshi", "Ahmed", "Kwame", "Ivan",
    "Mateo", "José", "Søren", "Łukasz",
];
const FEMALE: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Nancy",
    "Lisa",
    "Margaret",
    "Sofia",
    "Yuki",
    "Fatima",
    "Ama",
    "Olga",
    "Camila",
    "Priya",
    "Zoë",
    "Anaïs",
];
// Non-ASCII names (and an apostrophe) on purpose: real exports carry them, and every
// consumer from the NDJSON framer to the Parquet writer must keep them intact.
const FAMILY: &[&str] = &[
    "Muñoz",
    "Müller",
    "Nguyễn",
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Nguyen",
    "O'Brien",
    "Kowalski",
    "Okafor",
    "Tanaka",
    "Haddad",
    "Schmidt",
    "Rossi",
    "Dubois",
];
const STREETS: &[&str] = &[
    "Main St",
    "Oak Ave",
    "Maple Dr",
    "Cedar Ln",
    "Elm St",
    "Washington Blvd",
    "Lake Rd",
    "Hillcrest Way",
    "Sunset Blvd",
    "River Rd",
];
/// (city, state, zip prefix)
const CITIES: &[(&str, &str, &str)] = &[
    ("Boston", "MA", "021"),
    ("Worcester", "MA", "016"),
    ("Springfield", "MA", "011"),
    ("Providence", "RI", "029"),
    ("Hartford", "CT", "061"),
    ("Albany", "NY", "122"),
    ("Portland", "ME", "041"),
    ("Burlington", "VT", "054"),
];
/// (OMB code, display)
const RACES: &[(&str, &str)] = &[
    ("2106-3", "White"),
    ("2054-5", "Black or African American"),
    ("2028-9", "Asian"),
    ("1002-5", "American Indian or Alaska Native"),
    ("2076-8", "Native Hawaiian or Other Pacific Islander"),
];
const ENCOUNTER_TYPES: &[(&str, &str, &str)] = &[
    ("185349003", "Encounter for check up", "AMB"),
    ("185345009", "Encounter for symptom", "AMB"),
    ("50849002", "Emergency room admission", "EMER"),
    ("183452005", "Emergency hospital admission", "IMP"),
    ("390906007", "Follow-up encounter", "AMB"),
    ("448337001", "Telemedicine consultation with patient", "VR"),
];
const CONDITIONS: &[(&str, &str)] = &[
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195662009", "Acute viral pharyngitis"),
    ("10509002", "Acute bronchitis"),
    ("55822004", "Hyperlipidemia"),
    ("40055000", "Chronic sinusitis"),
    ("162864005", "Body mass index 30+ - obesity"),
    ("444814009", "Viral sinusitis"),
    ("233604007", "Pneumonia"),
    ("36971009", "Sinusitis"),
    ("271737000", "Anemia"),
    ("195967001", "Asthma"),
];
const MEDICATIONS: &[(&str, &str)] = &[
    (
        "860975",
        "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
    ),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("308136", "amLODIPine 2.5 MG Oral Tablet"),
    ("259255", "Atorvastatin 80 MG Oral Tablet"),
    ("834061", "Penicillin V Potassium 250 MG Oral Tablet"),
    ("313782", "Acetaminophen 325 MG Oral Tablet"),
    (
        "895994",
        "120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler",
    ),
    ("198405", "Ibuprofen 100 MG Oral Tablet"),
];
const PROCEDURES: &[(&str, &str)] = &[
    ("430193006", "Medication Reconciliation (procedure)"),
    ("710824005", "Assessment of health and social care needs"),
    ("171207006", "Depression screening"),
    ("73761001", "Colonoscopy"),
    ("76601001", "Intramuscular injection"),
    ("162673000", "General examination of patient"),
];
const VACCINES: &[(&str, &str)] = &[
    ("140", "Influenza, seasonal, injectable, preservative free"),
    ("208", "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose"),
    ("113", "Td (adult) preservative free"),
    ("133", "Pneumococcal conjugate PCV 13"),
    ("43", "Hep B, adult"),
];
/// (code, display, category, reaction)
const ALLERGIES: &[(&str, &str, &str, &str)] = &[
    ("91936005", "Allergy to penicillin", "medication", "Hives"),
    ("300913006", "Shellfish allergy", "food", "Anaphylaxis"),
    (
        "232347008",
        "Dander (animal) allergy",
        "environment",
        "Allergic rhinitis",
    ),
    (
        "418689008",
        "Allergy to grass pollen",
        "environment",
        "Sneezing",
    ),
    ("91935009", "Allergy to peanuts", "food", "Wheezing"),
];
/// (loinc, display, unit, low, high, decimals)
const LABS: &[(&str, &str, &str, f64, f64, u32)] = &[
    (
        "2339-0",
        "Glucose [Mass/volume] in Blood",
        "mg/dL",
        65.0,
        140.0,
        1,
    ),
    (
        "38483-4",
        "Creatinine [Mass/volume] in Blood",
        "mg/dL",
        0.6,
        1.3,
        2,
    ),
    (
        "2947-0",
        "Sodium [Moles/volume] in Blood",
        "mmol/L",
        134.0,
        146.0,
        1,
    ),
    (
        "6298-4",
        "Potassium [Moles/volume] in Blood",
        "mmol/L",
        3.4,
        5.2,
        2,
    ),
    (
        "2069-3",
        "Chloride [Moles/volume] in Blood",
        "mmol/L",
        97.0,
        108.0,
        1,
    ),
    (
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        "%",
        4.5,
        8.5,
        1,
    ),
    (
        "2093-3",
        "Cholesterol [Mass/volume] in Serum or Plasma",
        "mg/dL",
        140.0,
        260.0,
        1,
    ),
    (
        "718-7",
        "Hemoglobin [Mass/volume] in Blood",
        "g/dL",
        11.0,
        17.5,
        1,
    ),
];
/// (loinc, display, unit, ucum, low, high, decimals)
const VITALS: &[(&str, &str, &str, &str, f64, f64, u32)] = &[
    ("8867-4", "Heart rate", "/min", "/min", 55.0, 110.0, 0),
    ("9279-1", "Respiratory rate", "/min", "/min", 11.0, 22.0, 0),
    ("8310-5", "Body temperature", "Cel", "Cel", 36.1, 38.4, 1),
    ("29463-7", "Body weight", "kg", "kg", 45.0, 130.0, 1),
    ("8302-2", "Body height", "cm", "cm", 150.0, 195.0, 1),
    (
        "39156-5",
        "Body mass index (BMI) [Ratio]",
        "kg/m2",
        "kg/m2",
        18.0,
        38.0,
        1,
    ),
    (
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        "%",
        "%",
        90.0,
        100.0,
        0,
    ),
];
const SMOKING: &[(&str, &str)] = &[
    ("266919005", "Never smoked tobacco"),
    ("8517006", "Ex-smoker"),
    ("449868002", "Smokes tobacco daily"),
];
const URINE_COLORS: &[&str] = &["Yellow", "Straw", "Amber", "Dark yellow", "Pale yellow"];

const CAT_SYS: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const UCUM: &str = "http://unitsofmeasure.org";

fn value_in(r: &mut SplitMix64, lo: f64, hi: f64, decimals: u32) -> String {
    let v = lo + (hi - lo) * r.unit();
    format!("{v:.prec$}", prec = decimals as usize)
}

fn phone(r: &mut SplitMix64) -> String {
    format!("555-{:03}-{:04}", r.below(1000), r.below(10_000))
}

fn address(o: &mut String, r: &mut SplitMix64) {
    let (city, state, zip) = *r.pick(CITIES);
    w!(
        o,
        r#"{{"use":"home","type":"physical","line":["{} {}"],"city":"{city}","state":"{state}","postalCode":"{zip}{:02}","country":"US"}}"#,
        r.range(1, 9999),
        r.pick(STREETS),
        r.below(100)
    );
}

fn organization(o: &mut String, r: &mut SplitMix64, id: &str, i: u64) {
    const NAMES: &[&str] = &[
        "Good Health Clinic",
        "Riverside General Hospital",
        "Hillcrest Family Practice",
        "Lakeside Medical Center",
    ];
    w!(o, r#"{{"resourceType":"Organization","id":"{id}","#);
    meta(o, r);
    w!(
        o,
        r#","identifier":[{{"system":"http://hl7.org/fhir/sid/us-npi","value":"{}"}}],"active":true,"type":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/organization-type","code":"prov","display":"Healthcare Provider"}}],"text":"Healthcare Provider"}}],"name":"{}","telecom":[{{"system":"phone","value":"{}"}}],"address":["#,
        1_000_000_000 + r.below(999_999_999),
        NAMES[(i as usize) % NAMES.len()],
        phone(r)
    );
    address(o, r);
    o.push_str("]}");
}

fn location(o: &mut String, r: &mut SplitMix64, id: &str, org: &str) {
    const NAMES: &[&str] = &[
        "Main Campus",
        "North Clinic",
        "Urgent Care",
        "Imaging Center",
        "East Pavilion",
    ];
    w!(o, r#"{{"resourceType":"Location","id":"{id}","#);
    meta(o, r);
    w!(
        o,
        r#","status":"active","name":"{}","mode":"instance","address":"#,
        r.pick(NAMES)
    );
    address(o, r);
    w!(
        o,
        r#","position":{{"longitude":{},"latitude":{}}},"#,
        value_in(r, -73.5, -70.0, 6),
        value_in(r, 41.0, 44.0, 6)
    );
    reference(o, "managingOrganization", "Organization", org);
    o.push('}');
}

fn practitioner(o: &mut String, r: &mut SplitMix64, id: &str) {
    let female = r.chance(0.5);
    let given = if female { r.pick(FEMALE) } else { r.pick(MALE) };
    w!(o, r#"{{"resourceType":"Practitioner","id":"{id}","#);
    meta(o, r);
    w!(
        o,
        r#","identifier":[{{"system":"http://hl7.org/fhir/sid/us-npi","value":"{}"}}],"active":true,"name":[{{"use":"official","family":"{}","given":["{given}"],"prefix":["Dr."]}}],"telecom":[{{"system":"email","value":"{}@example.org","use":"work"}}],"gender":"{}"}}"#,
        1_000_000_000 + r.below(999_999_999),
        r.pick(FAMILY),
        ascii_lower(given),
        if female { "female" } else { "male" }
    );
}

struct Ctx<'a> {
    patient: &'a str,
    encounter: &'a str,
    when: i64,
}

fn patient_bundle(
    o: &mut String,
    r: &mut SplitMix64,
    sh: &Shared,
    index: u64,
    f: &mut impl FnMut(&str, &[u8]),
) {
    let pid = uuid(r);
    o.clear();
    patient(o, r, sh, &pid, index);
    f("Patient", o.as_bytes());

    let encounters = 2 + r.below(5);
    let mut allergies_left = r.below(3);
    for _ in 0..encounters {
        let eid = uuid(r);
        let when = CLINICAL_BASE_S + r.range(0, CLINICAL_SPAN_S);
        let practitioner = r.pick::<String>(&sh.practs).clone();
        o.clear();
        encounter(o, r, sh, &eid, &pid, &practitioner, when);
        f("Encounter", o.as_bytes());
        let c = Ctx {
            patient: &pid,
            encounter: &eid,
            when,
        };

        // Vitals at every encounter, plus a blood-pressure panel.
        let nvitals = 2 + r.below(4);
        for _ in 0..nvitals {
            o.clear();
            let v = *r.pick(VITALS);
            vital(o, r, &c, v);
            f("Observation", o.as_bytes());
        }
        o.clear();
        blood_pressure(o, r, &c);
        f("Observation", o.as_bytes());

        // Social history: coded and string/boolean values.
        if r.chance(0.3) {
            o.clear();
            smoking(o, r, &c);
            f("Observation", o.as_bytes());
        }
        if r.chance(0.15) {
            o.clear();
            urine_color(o, r, &c);
            f("Observation", o.as_bytes());
        }
        if r.chance(0.1) {
            o.clear();
            fall_risk(o, r, &c);
            f("Observation", o.as_bytes());
        }

        // Labs with a DiagnosticReport pointing at them.
        if r.chance(0.5) {
            let nlabs = 1 + r.below(4);
            let mut ids = Vec::with_capacity(nlabs as usize);
            for _ in 0..nlabs {
                let id = uuid(r);
                o.clear();
                let l = *r.pick(LABS);
                lab(o, r, &c, &id, l);
                f("Observation", o.as_bytes());
                ids.push(id);
            }
            o.clear();
            diagnostic_report(o, r, &c, &practitioner, &ids);
            f("DiagnosticReport", o.as_bytes());
        }
        if r.chance(0.4) {
            o.clear();
            condition(o, r, &c);
            f("Condition", o.as_bytes());
        }
        if r.chance(0.45) {
            o.clear();
            medication_request(o, r, &c, &practitioner);
            f("MedicationRequest", o.as_bytes());
        }
        if r.chance(0.35) {
            o.clear();
            procedure(o, r, &c, &practitioner);
            f("Procedure", o.as_bytes());
        }
        if r.chance(0.3) {
            o.clear();
            immunization(o, r, &c, sh);
            f("Immunization", o.as_bytes());
        }
        if allergies_left > 0 && r.chance(0.5) {
            allergies_left -= 1;
            o.clear();
            allergy(o, r, &c, &practitioner);
            f("AllergyIntolerance", o.as_bytes());
        }
    }
}

fn patient(o: &mut String, r: &mut SplitMix64, sh: &Shared, id: &str, index: u64) {
    let female = r.chance(0.52);
    let names = if female { FEMALE } else { MALE };
    let given1 = *r.pick(names);
    let given2 = *r.pick(names);
    let family = *r.pick(FAMILY);
    let (race_code, race) = *r.pick(RACES);
    let birth_days = r.range(-25_000, 19_000); // ~1901 .. ~2022
    let (eth_code, eth) = if r.chance(0.2) {
        ("2135-2", "Hispanic or Latino")
    } else {
        ("2186-5", "Not Hispanic or Latino")
    };
    w!(o, r#"{{"resourceType":"Patient","id":"{id}","#);
    meta(o, r);
    w!(
        o,
        r#","extension":[{{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-race","extension":[{{"url":"ombCategory","valueCoding":{{"system":"urn:oid:2.16.840.1.113883.6.238","code":"{race_code}","display":"{race}"}}}},{{"url":"text","valueString":"{race}"}}]}},{{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity","extension":[{{"url":"ombCategory","valueCoding":{{"system":"urn:oid:2.16.840.1.113883.6.238","code":"{eth_code}","display":"{eth}"}}}},{{"url":"text","valueString":"{eth}"}}]}},{{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex","valueCode":"{}"}}],"#,
        if female { "F" } else { "M" }
    );
    w!(
        o,
        r#""identifier":[{{"use":"usual","type":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR","display":"Medical Record Number"}}],"text":"Medical Record Number"}},"system":"urn:oid:1.2.36.146.595.217.0.1","value":"MRN{:08}"}},{{"use":"official","type":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"SS","display":"Social Security Number"}}],"text":"Social Security Number"}},"system":"http://hl7.org/fhir/sid/us-ssn","value":"999-{:02}-{:04}"}}],"active":true,"#,
        index + 1,
        10 + r.below(90),
        r.below(10_000)
    );
    w!(
        o,
        r#""name":[{{"use":"official","family":"{family}","given":["{given1}","{given2}"],"prefix":["{}"]}}"#,
        if female { "Ms." } else { "Mr." }
    );
    if r.chance(0.2) {
        w!(
            o,
            r#",{{"use":"nickname","given":["{}"]}}"#,
            given1.chars().take(3).collect::<String>()
        );
    }
    w!(
        o,
        r#"],"telecom":[{{"system":"phone","value":"{}","use":"home"}},{{"system":"email","value":"{}.{}{}@example.com","use":"home"}}],"gender":"{}","birthDate":"{}","#,
        phone(r),
        ascii_lower(given1),
        ascii_lower(family),
        r.below(100),
        if female { "female" } else { "male" },
        fmt_date(birth_days)
    );
    if r.chance(0.03) {
        w!(
            o,
            r#""deceasedDateTime":"{}","#,
            fmt_datetime(CLINICAL_BASE_S + r.range(0, CLINICAL_SPAN_S))
        );
    }
    o.push_str(r#""address":["#);
    address(o, r);
    o.push_str(r#"],"maritalStatus":"#);
    let (mc, md) = *r.pick(&[
        ("M", "Married"),
        ("S", "Never Married"),
        ("D", "Divorced"),
        ("W", "Widowed"),
    ]);
    concept(
        o,
        "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
        mc,
        md,
    );
    w!(
        o,
        r#","communication":[{{"language":{{"coding":[{{"system":"urn:ietf:bcp:47","code":"en-US","display":"English (United States)"}}],"text":"English"}}}}],"generalPractitioner":[{{"reference":"Practitioner/{}"}}],"#,
        r.pick::<String>(&sh.practs)
    );
    reference(
        o,
        "managingOrganization",
        "Organization",
        r.pick::<String>(&sh.orgs),
    );
    o.push('}');
}

fn encounter(
    o: &mut String,
    r: &mut SplitMix64,
    sh: &Shared,
    id: &str,
    pid: &str,
    pract: &str,
    when: i64,
) {
    let (code, display, class) = *r.pick(ENCOUNTER_TYPES);
    let class_display = match class {
        "AMB" => "ambulatory",
        "EMER" => "emergency",
        "IMP" => "inpatient encounter",
        _ => "virtual",
    };
    let minutes = if class == "IMP" {
        r.range(1440, 7200)
    } else {
        r.range(15, 90)
    };
    w!(o, r#"{{"resourceType":"Encounter","id":"{id}","#);
    meta(o, r);
    w!(
        o,
        r#","status":"finished","class":{{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"{class}","display":"{class_display}"}},"type":["#
    );
    concept(o, SNOMED, code, display);
    o.push_str("],");
    reference(o, "subject", "Patient", pid);
    w!(
        o,
        r#","participant":[{{"type":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"PPRF","display":"primary performer"}}]}}],"individual":{{"reference":"Practitioner/{pract}"}}}}],"period":{{"start":"{}","end":"{}"}},"location":[{{"location":{{"reference":"Location/{}"}}}}],"#,
        fmt_datetime(when),
        fmt_datetime(when + minutes * 60),
        r.pick::<String>(&sh.locs)
    );
    reference(
        o,
        "serviceProvider",
        "Organization",
        r.pick::<String>(&sh.orgs),
    );
    o.push('}');
}

fn obs_head(
    o: &mut String,
    r: &mut SplitMix64,
    c: &Ctx<'_>,
    id: &str,
    cat: &str,
    cat_display: &str,
) {
    w!(o, r#"{{"resourceType":"Observation","id":"{id}","#);
    meta(o, r);
    o.push_str(r#","status":"final","category":[{"coding":["#);
    coding(o, CAT_SYS, cat, cat_display);
    o.push_str("]}],");
    let _ = c;
}

fn obs_tail(o: &mut String, c: &Ctx<'_>) {
    o.push(',');
    reference(o, "subject", "Patient", c.patient);
    o.push(',');
    reference(o, "encounter", "Encounter", c.encounter);
    w!(
        o,
        r#","effectiveDateTime":"{}","issued":"{}.000Z""#,
        fmt_datetime(c.when),
        &fmt_datetime(c.when + 600)[..19]
    );
}

fn vital(
    o: &mut String,
    r: &mut SplitMix64,
    c: &Ctx<'_>,
    v: (&str, &str, &str, &str, f64, f64, u32),
) {
    let id = uuid(r);
    obs_head(o, r, c, &id, "vital-signs", "Vital Signs");
    o.push_str(r#""code":"#);
    concept(o, LOINC, v.0, v.1);
    obs_tail(o, c);
    w!(
        o,
        r#","valueQuantity":{{"value":{},"unit":"{}","system":"{UCUM}","code":"{}"}}}}"#,
        value_in(r, v.4, v.5, v.6),
        v.2,
        v.3
    );
}

fn blood_pressure(o: &mut String, r: &mut SplitMix64, c: &Ctx<'_>) {
    let id = uuid(r);
    obs_head(o, r, c, &id, "vital-signs", "Vital Signs");
    o.push_str(r#""code":"#);
    concept(
        o,
        LOINC,
        "85354-9",
        "Blood pressure panel with all children optional",
    );
    obs_tail(o, c);
    o.push_str(r#","component":[{"code":"#);
    concept(o, LOINC, "8480-6", "Systolic blood pressure");
    w!(
        o,
        r#","valueQuantity":{{"value":{},"unit":"mm[Hg]","system":"{UCUM}","code":"mm[Hg]"}}}},{{"code":"#,
        r.range(95, 175)
    );
    concept(o, LOINC, "8462-4", "Diastolic blood pressure");
    w!(
        o,
        r#","valueQuantity":{{"value":{},"unit":"mm[Hg]","system":"{UCUM}","code":"mm[Hg]"}}}}]}}"#,
        r.range(55, 105)
    );
}

fn smoking(o: &mut String, r: &mut SplitMix64, c: &Ctx<'_>) {
    let id = uuid(r);
    obs_head(o, r, c, &id, "social-history", "Social History");
    o.push_str(r#""code":"#);
    concept(o, LOINC, "72166-2", "Tobacco smoking status");
    obs_tail(o, c);
    let (code, display) = *r.pick(SMOKING);
    o.push_str(r#","valueCodeableConcept":"#);
    concept(o, SNOMED, code, display);
    o.push('}');
}

fn urine_color(o: &mut String, r: &mut SplitMix64, c: &Ctx<'_>) {
    let id = uuid(r);
    obs_head(o, r, c, &id, "laboratory", "Laboratory");
    o.push_str(r#""code":"#);
    concept(o, LOINC, "5778-6", "Color of Urine");
    obs_tail(o, c);
    w!(o, r#","valueString":"{}"}}"#, r.pick(URINE_COLORS));
}

fn fall_risk(o: &mut String, r: &mut SplitMix64, c: &Ctx<'_>) {
    let id = uuid(r);
    obs_head(o, r, c, &id, "survey", "Survey");
    o.push_str(r#""code":"#);
    concept(o, LOINC, "73830-2", "Fall risk assessment");
    obs_tail(o, c);
    w!(o, r#","valueBoolean":{}}}"#, r.chance(0.25));
}

fn lab(
    o: &mut String,
    r: &mut SplitMix64,
    c: &Ctx<'_>,
    id: &str,
    l: (&str, &str, &str, f64, f64, u32),
) {
    obs_head(o, r, c, id, "laboratory", "Laboratory");
    o.push_str(r#""code":"#);
    concept(o, LOINC, l.0, l.1);
    obs_tail(o, c);
    // Values spread 15% beyond the reference range on both sides, so some are flagged.
    let span = l.4 - l.3;
    let v: f64 = value_in(r, l.3 - span * 0.15, l.4 + span * 0.15, l.5)
        .parse()
        .unwrap_or(l.3);
    let (flag, flag_display) = if v < l.3 {
        ("L", "Low")
    } else if v > l.4 {
        ("H", "High")
    } else {
        ("N", "Normal")
    };
    w!(
        o,
        r#","valueQuantity":{{"value":{v:.prec$},"unit":"{unit}","system":"{UCUM}","code":"{unit}"}},"interpretation":["#,
        prec = l.5 as usize,
        unit = l.2
    );
    concept(
        o,
        "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        flag,
        flag_display,
    );
    w!(
        o,
        r#"],"referenceRange":[{{"low":{{"value":{},"unit":"{unit}","system":"{UCUM}","code":"{unit}"}},"high":{{"value":{},"unit":"{unit}","system":"{UCUM}","code":"{unit}"}}}}]}}"#,
        l.3,
        l.4,
        unit = l.2
    );
}

fn diagnostic_report(
    o: &mut String,
    r: &mut SplitMix64,
    c: &Ctx<'_>,
    pract: &str,
    results: &[String],
) {
    let id = uuid(r);
    w!(o, r#"{{"resourceType":"DiagnosticReport","id":"{id}","#);
    meta(o, r);
    o.push_str(r#","status":"final","category":["#);
    concept(
        o,
        "http://terminology.hl7.org/CodeSystem/v2-0074",
        "LAB",
        "Laboratory",
    );
    o.push_str(r#"],"code":"#);
    concept(
        o,
        LOINC,
        "24323-8",
        "Comprehensive metabolic 2000 panel - Serum or Plasma",
    );
    o.push(',');
    reference(o, "subject", "Patient", c.patient);
    o.push(',');
    reference(o, "encounter", "Encounter", c.encounter);
    w!(
        o,
        r#","effectiveDateTime":"{}","issued":"{}","performer":[{{"reference":"Practitioner/{pract}"}}],"result":["#,
        fmt_datetime(c.when),
        fmt_datetime(c.when + 3600)
    );
    for (i, id) in results.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        w!(o, r#"{{"reference":"Observation/{id}"}}"#);
    }
    o.push_str("]}");
}

/// Lowercase ASCII letters only, for e-mail local parts ("Muñoz" -> "muoz").
fn ascii_lower(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Free-text notes, already JSON-escaped: quotes, a newline, a tab, non-ASCII and an
/// escaped non-BMP character, as clinicians' notes have.
const NOTES: &[&str] = &[
    r#"Patient reports \"intermittent\" symptoms.\nReview in 2 weeks."#,
    r#"Prefers español; interpreter requested.\tFamily present."#,
    r#"Pain 3/10 \u2014 improving \ud83d\ude42"#,
];

fn condition(o: &mut String, r: &mut SplitMix64, c: &Ctx<'_>) {
    let id = uuid(r);
    let (code, display) = *r.pick(CONDITIONS);
    let resolved = r.chance(0.4);
    w!(o, r#"{{"resourceType":"Condition","id":"{id}","#);
    meta(o, r);
    o.push_str(r#","clinicalStatus":{"coding":["#);
    let status = if resolved { "resolved" } else { "active" };
    w!(
        o,
        r#"{{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"{status}"}}]}},"verificationStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"confirmed"}}]}},"category":["#
    );
    concept(
        o,
        "http://terminology.hl7.org/CodeSystem/condition-category",
        "encounter-diagnosis",
        "Encounter Diagnosis",
    );
    o.push_str(r#"],"code":"#);
    concept(o, SNOMED, code, display);
    o.push(',');
    reference(o, "subject", "Patient", c.patient);
    o.push(',');
    reference(o, "encounter", "Encounter", c.encounter);
    w!(o, r#","onsetDateTime":"{}","#, fmt_datetime(c.when));
    if resolved {
        w!(
            o,
            r#""abatementDateTime":"{}","#,
            fmt_datetime(c.when + r.range(3, 60) * 86_400)
        );
    }
    if r.chance(0.15) {
        w!(o, r#""note":[{{"text":"{}"}}],"#, r.pick(NOTES));
    }
    w!(o, r#""recordedDate":"{}"}}"#, fmt_datetime(c.when));
}

fn medication_request(o: &mut String, r: &mut SplitMix64, c: &Ctx<'_>, pract: &str) {
    let id = uuid(r);
    let (code, display) = *r.pick(MEDICATIONS);
    let per_day = 1 + r.below(3);
    w!(o, r#"{{"resourceType":"MedicationRequest","id":"{id}","#);
    meta(o, r);
    w!(
        o,
        r#","status":"{}","intent":"order","medicationCodeableConcept":"#,
        if r.chance(0.6) { "stopped" } else { "active" }
    );
    concept(
        o,
        "http://www.nlm.nih.gov/research/umls/rxnorm",
        code,
        display,
    );
    o.push(',');
    reference(o, "subject", "Patient", c.patient);
    o.push(',');
    reference(o, "encounter", "Encounter", c.encounter);
    w!(
        o,
        r#","authoredOn":"{}","requester":{{"reference":"Practitioner/{pract}"}},"dosageInstruction":[{{"sequence":1,"text":"Take {per_day} time(s) a day","timing":{{"repeat":{{"frequency":{per_day},"period":1,"periodUnit":"d"}}}},"asNeededBoolean":{},"doseAndRate":[{{"type":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/dose-rate-type","code":"ordered","display":"Ordered"}}]}},"doseQuantity":{{"value":1}}}}]}}]}}"#,
        fmt_datetime(c.when),
        r.chance(0.2)
    );
}

fn procedure(o: &mut String, r: &mut SplitMix64, c: &Ctx<'_>, pract: &str) {
    let id = uuid(r);
    let (code, display) = *r.pick(PROCEDURES);
    w!(o, r#"{{"resourceType":"Procedure","id":"{id}","#);
    meta(o, r);
    o.push_str(r#","status":"completed","code":"#);
    concept(o, SNOMED, code, display);
    o.push(',');
    reference(o, "subject", "Patient", c.patient);
    o.push(',');
    reference(o, "encounter", "Encounter", c.encounter);
    w!(
        o,
        r#","performedPeriod":{{"start":"{}","end":"{}"}},"performer":[{{"actor":{{"reference":"Practitioner/{pract}"}}}}]}}"#,
        fmt_datetime(c.when + 300),
        fmt_datetime(c.when + 300 + r.range(5, 60) * 60)
    );
}

fn immunization(o: &mut String, r: &mut SplitMix64, c: &Ctx<'_>, sh: &Shared) {
    let id = uuid(r);
    let (code, display) = *r.pick(VACCINES);
    w!(o, r#"{{"resourceType":"Immunization","id":"{id}","#);
    meta(o, r);
    o.push_str(r#","status":"completed","vaccineCode":"#);
    concept(o, "http://hl7.org/fhir/sid/cvx", code, display);
    o.push(',');
    reference(o, "patient", "Patient", c.patient);
    o.push(',');
    reference(o, "encounter", "Encounter", c.encounter);
    w!(
        o,
        r#","occurrenceDateTime":"{}","primarySource":true,"location":{{"reference":"Location/{}"}},"lotNumber":"LOT{:06}"}}"#,
        fmt_datetime(c.when),
        r.pick::<String>(&sh.locs),
        r.below(1_000_000)
    );
}

fn allergy(o: &mut String, r: &mut SplitMix64, c: &Ctx<'_>, pract: &str) {
    let id = uuid(r);
    let (code, display, category, reaction) = *r.pick(ALLERGIES);
    w!(o, r#"{{"resourceType":"AllergyIntolerance","id":"{id}","#);
    meta(o, r);
    w!(
        o,
        r#","clinicalStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical","code":"active"}}]}},"verificationStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/allergyintolerance-verification","code":"confirmed"}}]}},"type":"allergy","category":["{category}"],"criticality":"{}","code":"#,
        if r.chance(0.2) { "high" } else { "low" }
    );
    concept(o, SNOMED, code, display);
    o.push(',');
    reference(o, "patient", "Patient", c.patient);
    o.push(',');
    reference(o, "encounter", "Encounter", c.encounter);
    w!(
        o,
        r#","recordedDate":"{}","recorder":{{"reference":"Practitioner/{pract}"}},"reaction":[{{"manifestation":[{{"text":"{reaction}"}}],"severity":"{}"}}]}}"#,
        fmt_datetime(c.when),
        *r.pick(&["mild", "moderate", "severe"])
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_valid_json_with_id_and_meta() {
        let mut seen = std::collections::BTreeSet::new();
        // Enough patients to hit every vocabulary entry (e.g. multi-byte names).
        Generator::new(3).for_each_resource(400, |ty, line| {
            let v: serde_json::Value = serde_json::from_slice(line)
                .unwrap_or_else(|e| panic!("{ty}: {e}: {}", String::from_utf8_lossy(line)));
            assert_eq!(v["resourceType"], ty);
            assert!(v["id"].as_str().is_some_and(|s| s.len() == 36));
            assert!(v["meta"]["lastUpdated"]
                .as_str()
                .is_some_and(|s| s.ends_with('Z')));
            assert!(v["meta"]["versionId"].is_string());
            seen.insert(ty.to_owned());
        });
        for ty in RESOURCE_TYPES {
            assert!(seen.contains(*ty), "missing {ty}");
        }
    }

    #[test]
    fn patient_content_does_not_depend_on_patient_count() {
        let collect = |n| {
            let mut v = Vec::new();
            Generator::new(9).for_each_resource(n, |ty, line| {
                if ty == "Patient" {
                    v.push(line.to_vec());
                }
            });
            v
        };
        let small = collect(3);
        let big = collect(5);
        assert_eq!(small[..], big[..3]);
    }
}
