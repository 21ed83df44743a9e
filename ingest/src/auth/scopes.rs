//! Scopes as policy: SMART v1 and v2 scope strings become an authorization matrix
//! (context × resource type × interactions × optional search constraints) that every
//! request is checked against before it is sent.
//!
//! Rules (SMART App Launch v2, "Scopes and Launch Context"):
//! * v1 `read` = `rs`, v1 `write` = `cud`, v1 `*` = `cruds`; v2 letters `c r u d s`.
//! * `*` as the resource type matches every type.
//! * A v2 scope with a query (`system/Observation.rs?category=laboratory`) allows a
//!   search only when the search carries that parameter with that value (and nothing
//!   wider). Reads and exports cannot be proven to stay inside such a constraint
//!   locally, so constrained scopes never allow them.
//! * `$export` kick-off needs read on every `_type`; without `_type` it needs read on `*`
//!   ([`ScopeSet::allowed_export_types`] says what `_type` to send instead).
//! * File downloads need read on the file's resource type when the manifest names it.
//! * Scopes are checked across contexts: any granted scope that allows the request
//!   allows it. The token cache keeps grants for different launch contexts apart.

use std::collections::BTreeSet;
use std::fmt;

use crate::http::{Interaction, RequestDescr};

use super::error::ScopeDenied;

/// The scope context prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ScopeContext {
    /// `patient/`: the launch patient's compartment.
    Patient,
    /// `user/`: what the user may see.
    User,
    /// `system/`: backend services.
    System,
}

impl ScopeContext {
    fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "patient",
            Self::User => "user",
            Self::System => "system",
        }
    }
}

/// Interaction bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Interactions(u8);

impl Interactions {
    /// create
    pub const C: Self = Self(1);
    /// read
    pub const R: Self = Self(2);
    /// update
    pub const U: Self = Self(4);
    /// delete
    pub const D: Self = Self(8);
    /// search
    pub const S: Self = Self(16);
    /// All five.
    pub const ALL: Self = Self(31);

    /// Union.
    pub const fn or(self, o: Self) -> Self {
        Self(self.0 | o.0)
    }

    /// Whether every bit of `o` is set.
    pub const fn contains(self, o: Self) -> bool {
        self.0 & o.0 == o.0
    }

    fn letters(self) -> String {
        [
            (Self::C, 'c'),
            (Self::R, 'r'),
            (Self::U, 'u'),
            (Self::D, 'd'),
            (Self::S, 's'),
        ]
        .iter()
        .filter(|(b, _)| self.contains(*b))
        .map(|(_, c)| *c)
        .collect()
    }
}

/// One parsed resource scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    /// Context prefix.
    pub context: ScopeContext,
    /// Resource type, `None` for `*`.
    pub resource_type: Option<String>,
    /// Allowed interactions.
    pub interactions: Interactions,
    /// v2 search-parameter constraints (`name`, `value`).
    pub constraints: Vec<(String, String)>,
}

impl ResourceScope {
    /// Parses `patient/Observation.read`, `system/*.rs?category=laboratory`, ... Returns
    /// `None` for non-resource scopes (`openid`, `launch/patient`, `offline_access`).
    pub fn parse(s: &str) -> Option<Self> {
        let (ctx, rest) = s.split_once('/')?;
        let context = match ctx {
            "patient" => ScopeContext::Patient,
            "user" => ScopeContext::User,
            "system" => ScopeContext::System,
            _ => return None,
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (ty, perm) = rest.rsplit_once('.')?;
        if ty.is_empty() || ty.contains('/') {
            return None;
        }
        let resource_type = (ty != "*").then(|| ty.to_owned());
        let interactions = match perm {
            "read" => Interactions::R.or(Interactions::S),
            "write" => Interactions::C.or(Interactions::U).or(Interactions::D),
            "*" => Interactions::ALL,
            letters if !letters.is_empty() => {
                let mut acc = Interactions::default();
                for ch in letters.chars() {
                    let bit = match ch {
                        'c' => Interactions::C,
                        'r' => Interactions::R,
                        'u' => Interactions::U,
                        'd' => Interactions::D,
                        's' => Interactions::S,
                        _ => return None,
                    };
                    acc = acc.or(bit);
                }
                acc
            }
            _ => return None,
        };
        let constraints = query
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            context,
            resource_type,
            interactions,
            constraints,
        })
    }

    fn matches_type(&self, ty: Option<&str>) -> bool {
        match (&self.resource_type, ty) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        }
    }

    /// Whether a search with `params` stays inside this scope's constraints.
    fn search_within(&self, params: &[(String, String)]) -> bool {
        self.constraints.iter().all(|(name, value)| {
            let mut found = false;
            for (k, v) in params {
                if k == name {
                    found = true;
                    let ok = v.split(',').all(|one| {
                        one == value
                            || (!value.contains('|') && one.ends_with(&format!("|{value}")))
                    });
                    if !ok {
                        return false;
                    }
                } else if k.split(':').next() == Some(name.as_str()) {
                    // A modifier (`category:not=...`) widens or changes the meaning.
                    return false;
                }
            }
            found
        })
    }
}

/// A set of scopes (requested or granted) and the matrix derived from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    raw: BTreeSet<String>,
    resource: Vec<ResourceScope>,
}

/// What `_type` an export may use.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportTypes {
    /// A wildcard read scope: any type, `_type` may be omitted.
    All,
    /// Only these types (send them as `_type`).
    Only(Vec<String>),
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.raw {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(s)?;
            first = false;
        }
        Ok(())
    }
}

impl ScopeSet {
    /// Parses a space-separated scope string.
    pub fn parse(s: &str) -> Self {
        Self::from_iter(s.split_whitespace())
    }

    /// Every scope string, sorted.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.raw.iter().map(String::as_str)
    }

    /// Whether the exact scope string is present.
    pub fn contains(&self, scope: &str) -> bool {
        self.raw.contains(scope)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The parsed resource scopes.
    pub fn resource_scopes(&self) -> &[ResourceScope] {
        &self.resource
    }

    /// Scopes in `self` (requested) that `granted` does not contain, sorted.
    pub fn missing_from(&self, granted: &ScopeSet) -> Vec<String> {
        self.raw.difference(&granted.raw).cloned().collect()
    }

    /// The context named in denial messages: `system` if any system scope is present,
    /// else `patient`, else `user`.
    fn primary_context(&self) -> ScopeContext {
        let has = |c| self.resource.iter().any(|s| s.context == c);
        if has(ScopeContext::System) || self.resource.is_empty() {
            ScopeContext::System
        } else if has(ScopeContext::Patient) {
            ScopeContext::Patient
        } else {
            ScopeContext::User
        }
    }

    fn allows_unconstrained(&self, ty: Option<&str>, need: Interactions) -> bool {
        self.resource.iter().any(|s| {
            s.constraints.is_empty() && s.matches_type(ty) && s.interactions.contains(need)
        })
    }

    fn allows_search(&self, ty: Option<&str>, params: &[(String, String)]) -> bool {
        self.resource.iter().any(|s| {
            s.matches_type(ty)
                && s.interactions.contains(Interactions::S)
                && s.search_within(params)
        })
    }

    fn denied(&self, ty: Option<&str>, need: Interactions, action: String) -> ScopeDenied {
        let missing = format!(
            "{}/{}.{}",
            self.primary_context().as_str(),
            ty.unwrap_or("*"),
            need.letters()
        );
        ScopeDenied::new(missing, action)
    }

    /// Checks one request against the matrix.
    pub fn check(&self, req: &RequestDescr<'_>) -> Result<(), ScopeDenied> {
        self.check_interaction(req.interaction)
    }

    /// Checks an interaction against the matrix.
    pub fn check_interaction(&self, i: &Interaction) -> Result<(), ScopeDenied> {
        let rs = Interactions::R.or(Interactions::S);
        let simple = |ty: &str, need: Interactions, verb: &str| {
            if self.allows_unconstrained(Some(ty), need) {
                Ok(())
            } else {
                Err(self.denied(Some(ty), need, format!("{verb} {ty}")))
            }
        };
        match i {
            Interaction::Read { resource_type } => simple(resource_type, Interactions::R, "read"),
            Interaction::Create { resource_type } => {
                simple(resource_type, Interactions::C, "create")
            }
            Interaction::Update { resource_type } => {
                simple(resource_type, Interactions::U, "update")
            }
            Interaction::Delete { resource_type } => {
                simple(resource_type, Interactions::D, "delete")
            }
            Interaction::Search {
                resource_type,
                params,
            } => {
                let ty = resource_type.as_deref();
                if self.allows_search(ty, params) {
                    Ok(())
                } else {
                    Err(self.denied(
                        ty,
                        Interactions::S,
                        format!("search {}", ty.unwrap_or("all types")),
                    ))
                }
            }
            Interaction::Export { types } => {
                if types.is_empty() {
                    if self.allows_unconstrained(None, Interactions::R) {
                        return Ok(());
                    }
                    return Err(self.denied(None, rs, "$export without _type".into()));
                }
                for t in types {
                    if !self.allows_unconstrained(Some(t), Interactions::R) {
                        return Err(self.denied(Some(t), rs, format!("$export of {t}")));
                    }
                }
                Ok(())
            }
            Interaction::FileDownload {
                resource_type: Some(t),
            } => {
                if self.allows_unconstrained(Some(t), Interactions::R) {
                    Ok(())
                } else {
                    Err(self.denied(Some(t), rs, format!("download of {t} file")))
                }
            }
            _ => Ok(()),
        }
    }

    /// The `_type` an export may request: everything (a wildcard read scope) or the
    /// listed types with unconstrained read.
    pub fn allowed_export_types(&self) -> ExportTypes {
        if self.allows_unconstrained(None, Interactions::R) {
            return ExportTypes::All;
        }
        let types: BTreeSet<String> = self
            .resource
            .iter()
            .filter(|s| s.constraints.is_empty() && s.interactions.contains(Interactions::R))
            .filter_map(|s| s.resource_type.clone())
            .collect();
        ExportTypes::Only(types.into_iter().collect())
    }
}

impl<'a> FromIterator<&'a str> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let raw: BTreeSet<String> = iter.into_iter().map(str::to_owned).collect();
        let resource = raw.iter().filter_map(|s| ResourceScope::parse(s)).collect();
        Self { raw, resource }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(ty: &str, params: &[(&str, &str)]) -> Interaction {
        Interaction::Search {
            resource_type: Some(ty.into()),
            params: params
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }
    fn read(ty: &str) -> Interaction {
        Interaction::Read {
            resource_type: ty.into(),
        }
    }
    fn export(types: &[&str]) -> Interaction {
        Interaction::Export {
            types: types.iter().map(|t| (*t).into()).collect(),
        }
    }

    #[test]
    fn parse_v1_and_v2() {
        type Want<'a> = Option<(ScopeContext, Option<&'a str>, &'a str, usize)>;
        let cases: &[(&str, Want<'_>)] = &[
            (
                "patient/Observation.read",
                Some((ScopeContext::Patient, Some("Observation"), "rs", 0)),
            ),
            ("user/*.*", Some((ScopeContext::User, None, "cruds", 0))),
            ("system/*.read", Some((ScopeContext::System, None, "rs", 0))),
            (
                "user/Patient.write",
                Some((ScopeContext::User, Some("Patient"), "cud", 0)),
            ),
            (
                "patient/*.cruds",
                Some((ScopeContext::Patient, None, "cruds", 0)),
            ),
            (
                "system/Observation.rs?category=laboratory",
                Some((ScopeContext::System, Some("Observation"), "rs", 1)),
            ),
            (
                "patient/Condition.s",
                Some((ScopeContext::Patient, Some("Condition"), "s", 0)),
            ),
            ("openid", None),
            ("fhirUser", None),
            ("launch/patient", None),
            ("offline_access", None),
            ("system/Observation.rx", None),
            ("system/Observation.", None),
            ("org/Observation.read", None),
        ];
        for (s, want) in cases {
            let got = ResourceScope::parse(s).map(|p| {
                (
                    p.context,
                    p.resource_type.clone(),
                    p.interactions.letters(),
                    p.constraints.len(),
                )
            });
            let want = want.map(|(c, t, l, n)| (c, t.map(str::to_owned), l.to_owned(), n));
            assert_eq!(got, want, "{s}");
        }
    }

    #[test]
    fn matrix_v1() {
        let g = ScopeSet::parse("system/Patient.read system/Observation.read launch openid");
        let table: &[(Interaction, Result<(), &str>)] = &[
            (read("Patient"), Ok(())),
            (search("Observation", &[("code", "1234-5")]), Ok(())),
            (read("Condition"), Err("system/Condition.r")),
            (search("Condition", &[]), Err("system/Condition.s")),
            (export(&["Patient", "Observation"]), Ok(())),
            (
                export(&["Patient", "Condition"]),
                Err("system/Condition.rs"),
            ),
            (export(&[]), Err("system/*.rs")),
            (
                Interaction::Create {
                    resource_type: "Patient".into(),
                },
                Err("system/Patient.c"),
            ),
            (
                Interaction::FileDownload {
                    resource_type: Some("Observation".into()),
                },
                Ok(()),
            ),
            (
                Interaction::FileDownload {
                    resource_type: Some("Encounter".into()),
                },
                Err("system/Encounter.rs"),
            ),
            (
                Interaction::FileDownload {
                    resource_type: None,
                },
                Ok(()),
            ),
            (Interaction::Other, Ok(())),
        ];
        for (i, want) in table {
            let got = g.check_interaction(i).map_err(|e| e.missing);
            assert_eq!(got, want.map_err(str::to_owned), "{i:?}");
        }
        assert_eq!(
            g.allowed_export_types(),
            ExportTypes::Only(vec!["Observation".into(), "Patient".into()])
        );
    }

    #[test]
    fn matrix_v1_wildcards() {
        let g = ScopeSet::parse("user/*.*");
        assert!(g.check_interaction(&read("Anything")).is_ok());
        assert!(g.check_interaction(&export(&[])).is_ok());
        assert_eq!(g.allowed_export_types(), ExportTypes::All);
        let g = ScopeSet::parse("system/*.read");
        assert!(g.check_interaction(&export(&[])).is_ok());
        assert_eq!(
            g.check_interaction(&Interaction::Delete {
                resource_type: "Patient".into()
            })
            .unwrap_err()
            .missing,
            "system/Patient.d"
        );
    }

    #[test]
    fn matrix_v2_with_constraints() {
        let g = ScopeSet::parse("system/Observation.rs?category=laboratory system/Patient.rs");
        let table: &[(Interaction, Result<(), &str>)] = &[
            (search("Observation", &[("category", "laboratory")]), Ok(())),
            (
                search(
                    "Observation",
                    &[
                        (
                            "category",
                            "http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
                        ),
                        ("patient", "1"),
                    ],
                ),
                Ok(()),
            ),
            (
                search("Observation", &[("category", "laboratory,vital-signs")]),
                Err("system/Observation.s"),
            ),
            (
                search(
                    "Observation",
                    &[("category:not", "laboratory"), ("category", "laboratory")],
                ),
                Err("system/Observation.s"),
            ),
            (
                search("Observation", &[("code", "x")]),
                Err("system/Observation.s"),
            ),
            // Reads and exports cannot be proven inside a constraint.
            (read("Observation"), Err("system/Observation.r")),
            (export(&["Observation"]), Err("system/Observation.rs")),
            (export(&["Patient"]), Ok(())),
        ];
        for (i, want) in table {
            let got = g.check_interaction(i).map_err(|e| e.missing);
            assert_eq!(got, want.map_err(str::to_owned), "{i:?}");
        }
    }

    #[test]
    fn v2_wildcard_cruds() {
        let g = ScopeSet::parse("patient/*.cruds");
        assert!(g.check_interaction(&read("Condition")).is_ok());
        assert!(g
            .check_interaction(&Interaction::Update {
                resource_type: "Condition".into()
            })
            .is_ok());
        assert!(g
            .check_interaction(&search("Observation", &[("code", "x")]))
            .is_ok());
        assert_eq!(g.allowed_export_types(), ExportTypes::All);
        let g = ScopeSet::parse("patient/*.rs");
        assert_eq!(
            g.check_interaction(&Interaction::Create {
                resource_type: "Condition".into()
            })
            .unwrap_err()
            .missing,
            "patient/Condition.c"
        );
    }

    #[test]
    fn v2_letters_are_exact() {
        let g = ScopeSet::parse("patient/Observation.s");
        assert!(g.check_interaction(&search("Observation", &[])).is_ok());
        let e = g.check_interaction(&read("Observation")).unwrap_err();
        assert_eq!(e.missing, "patient/Observation.r");
        assert!(e.to_string().contains("patient/Observation.r"), "{e}");
    }

    #[test]
    fn difference_and_display() {
        let req = ScopeSet::parse("system/Patient.rs system/Observation.rs system/Condition.rs");
        let granted = ScopeSet::parse("system/Patient.rs system/Observation.rs");
        assert_eq!(
            req.missing_from(&granted),
            vec!["system/Condition.rs".to_owned()]
        );
        assert_eq!(
            granted.to_string(),
            "system/Observation.rs system/Patient.rs"
        );
    }
}
