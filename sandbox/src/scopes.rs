//! SMART scopes, v1 (`patient/Observation.read`, `system/*.read`) and v2
//! (`system/Observation.rs`, `patient/Observation.rs?category=laboratory`).
//!
//! The granted scope is the intersection of the requested and the registered scopes: a
//! requested scope is granted when it is registered verbatim or a registered scope covers
//! it (same context, `*` or same type, a superset of permissions, no narrower query).

pub(crate) const C: u8 = 1;
pub(crate) const R: u8 = 2;
pub(crate) const U: u8 = 4;
pub(crate) const D: u8 = 8;
pub(crate) const S: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Patient,
    User,
    System,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResourceScope {
    pub(crate) context: Context,
    pub(crate) ty: String,
    pub(crate) perms: u8,
    pub(crate) query: Option<(String, String)>,
}

pub(crate) fn parse(scope: &str) -> Option<ResourceScope> {
    let (ctx, rest) = scope.split_once('/')?;
    let context = match ctx {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => {
            let (k, v) = q.split_once('=')?;
            (r, Some((k.to_owned(), v.to_owned())))
        }
        None => (rest, None),
    };
    let (ty, perm) = rest.rsplit_once('.')?;
    if ty.is_empty() {
        return None;
    }
    let perms = match perm {
        "read" => R | S,
        "write" => C | U | D,
        "*" => C | R | U | D | S,
        v2 => {
            let mut p = 0;
            for (i, ch) in "cruds".chars().enumerate() {
                if v2.contains(ch) {
                    p |= 1 << i;
                }
            }
            // v2 requires the letters in `cruds` order, each at most once.
            let canonical: String = "cruds".chars().filter(|c| v2.contains(*c)).collect();
            if p == 0 || canonical != v2 {
                return None;
            }
            p
        }
    };
    Some(ResourceScope {
        context,
        ty: ty.to_owned(),
        perms,
        query,
    })
}

fn covers(granted: &ResourceScope, wanted: &ResourceScope) -> bool {
    granted.context == wanted.context
        && (granted.ty == "*" || granted.ty == wanted.ty)
        && wanted.perms & granted.perms == wanted.perms
        && (granted.query.is_none() || granted.query == wanted.query)
}

/// Space-separated granted scope string.
pub(crate) fn grant(requested: &str, registered: &str) -> String {
    let reg: Vec<&str> = registered.split_whitespace().collect();
    if requested.trim().is_empty() {
        return reg.join(" ");
    }
    let reg_parsed: Vec<ResourceScope> = reg.iter().filter_map(|s| parse(s)).collect();
    let mut out: Vec<&str> = Vec::new();
    for want in requested.split_whitespace() {
        let ok = reg.contains(&want)
            || parse(want).is_some_and(|w| reg_parsed.iter().any(|g| covers(g, &w)));
        if ok && !out.contains(&want) {
            out.push(want);
        }
    }
    out.join(" ")
}

/// What a set of scopes allows on one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Access {
    /// Only the launch patient's compartment.
    pub(crate) patient_only: bool,
    /// Only resources whose `category` has this code.
    pub(crate) category: Option<String>,
}

/// The least restricted access `scopes` give for `perm` on `ty`, or `None`.
pub(crate) fn access(scopes: &[ResourceScope], ty: &str, perm: u8) -> Option<Access> {
    let mut best: Option<Access> = None;
    for s in scopes {
        if !(s.ty == "*" || s.ty == ty) || s.perms & perm != perm {
            continue;
        }
        let a = Access {
            patient_only: s.context == Context::Patient,
            category: s
                .query
                .as_ref()
                .filter(|(k, _)| k == "category")
                .map(|(_, v)| v.rsplit('|').next().unwrap_or(v).to_owned()),
        };
        let rank = |a: &Access| u8::from(a.patient_only) + u8::from(a.category.is_some());
        if best.as_ref().is_none_or(|b| rank(&a) < rank(b)) {
            best = Some(a);
        }
    }
    best
}

pub(crate) fn perm_name(perm: u8) -> &'static str {
    match perm {
        R => "read (v1 .read, v2 .r)",
        S => "search (v1 .read, v2 .s)",
        _ => "read and search (v1 .read, v2 .rs)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2() {
        let s = parse("system/*.read").unwrap();
        assert_eq!(
            (s.context, s.ty.as_str(), s.perms),
            (Context::System, "*", R | S)
        );
        let s = parse("patient/Observation.rs?category=laboratory").unwrap();
        assert_eq!(s.perms, R | S);
        assert_eq!(s.query, Some(("category".into(), "laboratory".into())));
        assert!(parse("system/Observation.sr").is_none());
        assert!(parse("openid").is_none());
    }

    #[test]
    fn grant_is_an_intersection() {
        let reg = "system/*.read system/Patient.rs openid";
        assert_eq!(
            grant(
                "system/Observation.read system/Patient.r system/Encounter.write openid fhirUser",
                reg
            ),
            "system/Observation.read system/Patient.r openid"
        );
        assert_eq!(grant("", reg), reg);
    }

    #[test]
    fn access_prefers_unrestricted() {
        let scopes: Vec<_> = [
            "patient/Observation.rs?category=laboratory",
            "user/Observation.read",
        ]
        .iter()
        .filter_map(|s| parse(s))
        .collect();
        let a = access(&scopes, "Observation", R | S).unwrap();
        assert!(!a.patient_only && a.category.is_none());
        assert!(access(&scopes, "Patient", R).is_none());
        let scopes = vec![parse("patient/Observation.rs?category=laboratory").unwrap()];
        let a = access(&scopes, "Observation", S).unwrap();
        assert!(a.patient_only);
        assert_eq!(a.category.as_deref(), Some("laboratory"));
    }
}
