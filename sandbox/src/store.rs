//! The in-memory resource store behind read, search and export.
//!
//! Each resource is kept as its raw JSON line (`Bytes`, sliced out of one buffer per input
//! file, so loading is one copy) plus the few fields the server filters on: id, patient
//! compartment, `meta.lastUpdated` and the first `category` code. Memory is therefore about
//! the size of the data set; use the generator's `write_ndjson_dir` plus a client reading
//! files directly when benchmarking beyond what fits in memory.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::generate::Generator;

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: Box<str>,
    pub(crate) patient: Option<Box<str>>,
    pub(crate) last_updated_ms: i64,
    pub(crate) category: Option<Box<str>>,
    pub(crate) line: Bytes,
    /// When the resource was deleted (ms since the epoch); deleted entries keep their slot
    /// so indices stay stable, and feed the `deleted` part of `_since` exports.
    pub(crate) deleted_ms: Option<i64>,
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    types: BTreeMap<String, Vec<Entry>>,
    index: HashMap<String, HashMap<Box<str>, usize>>,
}

#[derive(Deserialize)]
struct Ref {
    reference: Option<String>,
}

#[derive(Deserialize)]
struct PeekMeta {
    #[serde(rename = "lastUpdated")]
    last_updated: Option<String>,
}

#[derive(Deserialize)]
struct Peek {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    id: Option<String>,
    meta: Option<PeekMeta>,
    subject: Option<Ref>,
    patient: Option<Ref>,
    category: Option<Value>,
}

/// A data-directory problem, with the file it came from.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Milliseconds since the epoch for a FHIR instant, dateTime or date.
pub(crate) fn parse_time_ms(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let s = s.trim().replace(' ', "+");
    if let Ok(t) = time::OffsetDateTime::parse(&s, &Rfc3339) {
        return Some((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(s.get(..10)?, &fmt) {
        if s.len() == 10 {
            return Some(d.midnight().assume_utc().unix_timestamp() * 1000);
        }
    }
    None
}

fn first_code(v: &Value) -> Option<&str> {
    match v {
        Value::Array(a) => a.first().and_then(first_code),
        Value::String(s) => Some(s),
        Value::Object(o) => o
            .get("coding")
            .and_then(|c| c.as_array())
            .and_then(|c| c.first())
            .and_then(|c| c.get("code"))
            .and_then(|c| c.as_str()),
        _ => None,
    }
}

impl Store {
    pub(crate) fn generate(seed: u64, patients: usize) -> Self {
        let mut store = Store::default();
        Generator::new(seed).for_each_resource(patients, |ty, line| {
            // The generator's output is valid by construction (unit-tested).
            let _ = store.push(Some(ty), Bytes::copy_from_slice(line));
        });
        store
    }

    /// Loads every `*.ndjson` and `*.ndjson.gz` file of `dir` (not recursive).
    pub(crate) fn load_dir(dir: &Path) -> Result<Self, LoadError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LoadError::Io { path, source }
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                n.ends_with(".ndjson") || n.ends_with(".ndjson.gz")
            })
            .collect();
        paths.sort();
        let mut store = Store::default();
        for path in paths {
            let raw = std::fs::read(&path).map_err(io_err(&path))?;
            let data = if path.extension().is_some_and(|e| e == "gz") {
                let mut out = Vec::with_capacity(raw.len() * 8);
                flate2::read::MultiGzDecoder::new(&raw[..])
                    .read_to_end(&mut out)
                    .map_err(io_err(&path))?;
                out
            } else {
                raw
            };
            let data = Bytes::from(data);
            let mut start = 0;
            for (n, chunk) in data.split(|b| *b == b'\n').enumerate() {
                let len = chunk.len();
                let line = data.slice(start..start + len);
                start += len + 1;
                let trimmed = line
                    .iter()
                    .rposition(|b| !b.is_ascii_whitespace())
                    .map(|e| line.slice(..=e));
                let Some(line) = trimmed else { continue };
                store.push(None, line).map_err(|reason| LoadError::Line {
                    path: path.clone(),
                    line: n + 1,
                    reason,
                })?;
            }
        }
        Ok(store)
    }

    pub(crate) fn push(&mut self, ty: Option<&str>, line: Bytes) -> Result<(), String> {
        let peek: Peek =
            serde_json::from_slice(&line).map_err(|e| format!("not a JSON resource: {e}"))?;
        let rt = peek.resource_type.ok_or("no resourceType")?;
        if ty.is_some_and(|t| t != rt) {
            return Err(format!("expected {}, found {rt}", ty.unwrap_or_default()));
        }
        let id = peek.id.ok_or("no id")?;
        let patient = if rt == "Patient" {
            Some(id.clone())
        } else {
            peek.subject
                .or(peek.patient)
                .and_then(|r| r.reference)
                .and_then(|r| r.strip_prefix("Patient/").map(str::to_owned))
        };
        let last_updated_ms = peek
            .meta
            .and_then(|m| m.last_updated)
            .and_then(|s| parse_time_ms(&s))
            .unwrap_or(0);
        let category = peek.category.as_ref().and_then(first_code).map(Into::into);
        let entries = self.types.entry(rt.clone()).or_default();
        self.index
            .entry(rt)
            .or_default()
            .insert(id.clone().into(), entries.len());
        entries.push(Entry {
            id: id.into(),
            patient: patient.map(Into::into),
            last_updated_ms,
            category,
            line,
            deleted_ms: None,
        });
        Ok(())
    }

    /// Gives the first `count` live resources of `ty` a new version: `meta.lastUpdated`
    /// becomes `now_ms` and `meta.versionId` is incremented (when the line has them).
    /// Returns the ids touched.
    pub(crate) fn touch(&mut self, ty: &str, count: usize, now_ms: i64) -> Vec<String> {
        let Some(entries) = self.types.get_mut(ty) else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        for e in entries
            .iter_mut()
            .filter(|e| e.deleted_ms.is_none())
            .take(count)
        {
            let mut line = String::from_utf8_lossy(&e.line).into_owned();
            replace_string_field(
                &mut line,
                "lastUpdated",
                &crate::rng::fmt_instant_ms(now_ms),
            );
            if let Some(v) = string_field(&line, "versionId").and_then(|v| v.parse::<u64>().ok()) {
                replace_string_field(&mut line, "versionId", &(v + 1).to_string());
            }
            e.line = Bytes::from(line);
            e.last_updated_ms = now_ms;
            ids.push(e.id.to_string());
        }
        ids
    }

    /// Marks a resource deleted at `now_ms`; false when it does not exist (or is gone).
    pub(crate) fn delete(&mut self, ty: &str, id: &str, now_ms: i64) -> bool {
        let Some(&i) = self.index.get(ty).and_then(|m| m.get(id)) else {
            return false;
        };
        match self.types.get_mut(ty).and_then(|v| v.get_mut(i)) {
            Some(e) if e.deleted_ms.is_none() => {
                e.deleted_ms = Some(now_ms);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn types(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    pub(crate) fn has_type(&self, ty: &str) -> bool {
        self.types.contains_key(ty)
    }

    pub(crate) fn entries(&self, ty: &str) -> &[Entry] {
        self.types.get(ty).map(Vec::as_slice).unwrap_or_default()
    }

    pub(crate) fn get(&self, ty: &str, id: &str) -> Option<&Entry> {
        let i = *self.index.get(ty)?.get(id)?;
        self.entries(ty).get(i)
    }

    /// Live (not deleted) resources per type.
    pub(crate) fn counts(&self) -> std::collections::BTreeMap<String, usize> {
        self.types
            .iter()
            .map(|(t, e)| {
                (
                    t.clone(),
                    e.iter().filter(|e| e.deleted_ms.is_none()).count(),
                )
            })
            .collect()
    }

    pub(crate) fn patient_ids(&self) -> Vec<String> {
        self.entries("Patient")
            .iter()
            .filter(|e| e.deleted_ms.is_none())
            .map(|e| e.id.to_string())
            .collect()
    }

    pub(crate) fn first_encounter_of(&self, patient: &str) -> Option<String> {
        self.entries("Encounter")
            .iter()
            .find(|e| e.patient.as_deref() == Some(patient))
            .map(|e| e.id.to_string())
    }

    pub(crate) fn first_practitioner(&self) -> Option<String> {
        self.entries("Practitioner")
            .first()
            .map(|e| e.id.to_string())
    }
}

/// The value of the first `"field":"value"` string member in a raw JSON line.
fn string_field<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let key = format!("\"{field}\":\"");
    let start = line.find(&key)? + key.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

fn replace_string_field(line: &mut String, field: &str, value: &str) {
    let key = format!("\"{field}\":\"");
    if let Some(start) = line.find(&key).map(|i| i + key.len()) {
        if let Some(len) = line[start..].find('"') {
            line.replace_range(start..start + len, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_generated_data() {
        let s = Store::generate(1, 3);
        assert_eq!(s.patient_ids().len(), 3);
        let obs = &s.entries("Observation")[0];
        assert!(obs.patient.is_some());
        assert!(obs.last_updated_ms >= 1_451_606_400_000);
        assert!(obs.category.is_some());
        assert!(s.get("Observation", &obs.id).is_some());
        let imm = &s.entries("Immunization");
        assert!(imm.iter().all(|e| e.patient.is_some()));
    }

    #[test]
    fn touch_and_delete() {
        let mut s = Store::generate(2, 2);
        let ids = s.touch("Condition", 1, 1_900_000_000_000);
        let e = s.get("Condition", &ids[0]).unwrap();
        let v: Value = serde_json::from_slice(&e.line).unwrap();
        assert_eq!(v["meta"]["lastUpdated"], "2030-03-17T17:46:40.000Z");
        assert_eq!(e.last_updated_ms, 1_900_000_000_000);
        let before = s.counts()["Condition"];
        assert!(s.delete("Condition", &ids[0], 1));
        assert!(!s.delete("Condition", &ids[0], 2), "already gone");
        assert_eq!(s.counts()["Condition"], before - 1);
    }

    #[test]
    fn parses_fhir_times() {
        assert_eq!(parse_time_ms("2024-01-01"), Some(1_704_067_200_000));
        assert_eq!(
            parse_time_ms("2024-01-01T00:00:01.5Z"),
            Some(1_704_067_201_500)
        );
        assert_eq!(
            parse_time_ms("2024-01-01T01:00:00 01:00"),
            Some(1_704_067_200_000)
        );
        assert_eq!(parse_time_ms("yesterday"), None);
    }
}
