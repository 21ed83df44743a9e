//! [`ViewGroup`]: every view of one resource type, evaluated together.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::ArrowError;
use simd_json::BorrowedValue;

use super::{BatchState, CompiledView, EvalError, ViewError};
use crate::fhirpath::eval::relabel;
use crate::fhirpath::RootIndex;

/// Batch builders for every view of one resource type, evaluated together.
///
/// Compared with one [`ViewBatchBuilder`](super::ViewBatchBuilder) per view, a group
/// checks the resource type once per resource and reads the resource's root keys once for
/// all its views (one merged root index, whose slots are copied out to each view), instead
/// of once per view. Rows, columns and errors are exactly those of the separate builders.
///
/// ```
/// use std::sync::Arc;
/// use fhirhose_normalize::{CompiledView, ViewGroup};
///
/// let view = |name: &str, path: &str| Arc::new(CompiledView::from_json_slice(format!(
///     r#"{{"resource": "Patient", "name": "{name}",
///         "select": [{{"column": [{{"name": "v", "path": "{path}", "type": "string"}}]}}]}}"#
/// ).as_bytes()).unwrap());
/// let mut group = ViewGroup::new(vec![view("ids", "id"), view("genders", "gender")])?;
/// let mut line = br#"{"resourceType":"Patient","id":"p1","gender":"female"}"#.to_vec();
/// let resource = simd_json::to_borrowed_value(&mut line)?;
/// let rows: Vec<usize> = group.append(&resource).iter().map(|r| *r.as_ref().unwrap()).collect();
/// assert_eq!(rows, [1, 1]);
/// assert_eq!(group.finish_batch(1)?.num_rows(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ViewGroup {
    resource: String,
    views: Vec<Arc<CompiledView>>,
    states: Vec<BatchState>,
    /// Union of the views' root keys.
    index: RootIndex,
    /// Per view: the merged slot of each of the view's own slots.
    remap: Vec<Vec<u16>>,
    results: Vec<Result<usize, EvalError>>,
    /// The merged index ran out of slots (more than 4,096 root keys): fill per view.
    per_view: bool,
    /// Slot buffers kept between resources (always empty here).
    spare_merged: Vec<Option<&'static BorrowedValue<'static>>>,
    spare_view: Vec<Option<&'static BorrowedValue<'static>>>,
}

impl ViewGroup {
    /// A group of `views`, which must all apply to the same resource type (and be at least
    /// one). Output index `i` of [`append`](Self::append), [`finish`](Self::finish) and
    /// [`len`](Self::len) is `views[i]`.
    pub fn new(views: Vec<Arc<CompiledView>>) -> Result<ViewGroup, ViewError> {
        let Some(first) = views.first() else {
            return Err(ViewError::Invalid {
                at: "ViewGroup".into(),
                reason: "a group needs at least one view".into(),
            });
        };
        let resource = first.resource().to_owned();
        if let Some(other) = views.iter().find(|v| v.resource() != resource) {
            return Err(ViewError::Invalid {
                at: format!("ViewGroup({})", other.name()),
                reason: format!(
                    "the view applies to {} but the group to {resource}",
                    other.resource()
                ),
            });
        }
        let mut index = RootIndex::default();
        let mut remap = Vec::with_capacity(views.len());
        for v in &views {
            let map = v
                .root_index
                .names()
                .iter()
                .map(|n| index.slot(n).unwrap_or(u16::MAX))
                .collect();
            remap.push(map);
        }
        index.seal();
        let per_view = remap.iter().flatten().any(|&m| m == u16::MAX);
        Ok(ViewGroup {
            per_view,
            resource,
            states: views.iter().map(|v| BatchState::new(v)).collect(),
            results: views.iter().map(|_| Ok(0)).collect(),
            views,
            index,
            remap,
            spare_merged: Vec::new(),
            spare_view: Vec::new(),
        })
    }

    /// Groups `views` by resource type, one group per type in order of first appearance.
    pub fn group_all(views: impl IntoIterator<Item = Arc<CompiledView>>) -> Vec<ViewGroup> {
        let mut by_type: Vec<Vec<Arc<CompiledView>>> = Vec::new();
        for v in views {
            match by_type.iter_mut().find(|g| g[0].resource() == v.resource()) {
                Some(g) => g.push(v),
                None => by_type.push(vec![v]),
            }
        }
        by_type
            .into_iter()
            .filter_map(|g| ViewGroup::new(g).ok())
            .collect()
    }

    /// The resource type every view of the group applies to.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The views, in output order.
    pub fn views(&self) -> &[Arc<CompiledView>] {
        &self.views
    }

    /// Evaluates every view on one resource and appends their rows. Returns one result per
    /// view (in [`views`](Self::views) order): the rows appended, or the view's error (that
    /// view then appended nothing; the others are unaffected). A resource of another type
    /// gives `Ok(0)` everywhere.
    pub fn append(&mut self, resource: &BorrowedValue<'_>) -> &[Result<usize, EvalError>] {
        if !self.views[0].applies_to(resource) {
            for r in &mut self.results {
                *r = Ok(0);
            }
            return &self.results;
        }
        let mut merged = relabel(std::mem::take(&mut self.spare_merged));
        self.index.fill(resource, &mut merged);
        let mut slots = relabel(std::mem::take(&mut self.spare_view));
        for (i, view) in self.views.iter().enumerate() {
            if self.per_view {
                view.root_index.fill(resource, &mut slots);
                self.results[i] = self.states[i].append_with_slots(view, resource, &slots);
                continue;
            }
            slots.clear();
            slots.extend(
                self.remap[i]
                    .iter()
                    .map(|&m| merged.get(usize::from(m)).copied().flatten()),
            );
            self.results[i] = self.states[i].append_with_slots(view, resource, &slots);
        }
        self.spare_view = relabel(slots);
        self.spare_merged = relabel(merged);
        &self.results
    }

    /// Rows buffered for view `i` since its last finish.
    pub fn len(&self, i: usize) -> usize {
        self.states[i].rows
    }

    /// No rows buffered for any view.
    pub fn is_empty(&self) -> bool {
        self.states.iter().all(|s| s.rows == 0)
    }

    /// Columns of view `i` in [`CompiledView::fields`] order; resets that view's builder.
    pub fn finish(&mut self, i: usize) -> Vec<ArrayRef> {
        self.states[i].finish()
    }

    /// [`finish`](Self::finish) as a `RecordBatch` with view `i`'s schema.
    pub fn finish_batch(&mut self, i: usize) -> Result<RecordBatch, ArrowError> {
        let cols = self.states[i].finish();
        RecordBatch::try_new(self.views[i].schema(), cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(json: &str) -> Arc<CompiledView> {
        Arc::new(CompiledView::from_json_slice(json.as_bytes()).unwrap())
    }

    #[test]
    fn group_matches_separate_builders() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/views");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        let views: Vec<Arc<CompiledView>> = paths
            .iter()
            .map(|p| Arc::new(CompiledView::from_json_slice(&std::fs::read(p).unwrap()).unwrap()))
            .collect();
        let mut groups = ViewGroup::group_all(views.iter().cloned());
        assert!(groups.len() > 5);
        let lines = [
            r#"{"resourceType":"Patient","id":"p1","gender":"female","birthDate":"1970-01-02","name":[{"family":"Ng","given":["A","B"]},{"family":"Ho"}],"address":[{"city":"X","line":["1 Road"]}],"telecom":[{"system":"phone","value":"1"}]}"#,
            r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"1-2","display":"D"}],"text":"T"},"subject":{"reference":"Patient/p1"},"valueQuantity":{"value":1.50,"unit":"mg"},"component":[{"code":{"coding":[{"code":"c"}]},"valueQuantity":{"value":2.0}}]}"#,
            r#"{"resourceType":"Encounter","id":"e1","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/p1"},"period":{"start":"2020-01-01T00:00:00Z"}}"#,
            r#"{"resourceType":"Basic","id":"b1"}"#,
        ];
        let mut singles: Vec<_> = views.iter().map(|v| v.builder()).collect();
        for l in lines {
            let mut buf = Vec::new();
            crate::prepare_line(l.as_bytes(), &mut buf);
            let v = simd_json::to_borrowed_value(&mut buf).unwrap();
            for g in &mut groups {
                let rows: Vec<usize> = g.append(&v).iter().map(|r| *r.as_ref().unwrap()).collect();
                for (k, gv) in g.views().to_vec().iter().enumerate() {
                    let i = views.iter().position(|x| Arc::ptr_eq(x, gv)).unwrap();
                    assert_eq!(singles[i].append(&v).unwrap(), rows[k], "{}", gv.name());
                }
            }
        }
        for g in &mut groups {
            for (k, gv) in g.views().to_vec().iter().enumerate() {
                let i = views.iter().position(|x| Arc::ptr_eq(x, gv)).unwrap();
                let a = g.finish(k);
                let b = singles[i].finish();
                assert_eq!(a, b, "{}", gv.name());
            }
        }
        // Builders are re-created pre-sized after a finish; a second batch still matches
        // the schema (time zones, list fields).
        for l in lines {
            let mut buf = Vec::new();
            crate::prepare_line(l.as_bytes(), &mut buf);
            let v = simd_json::to_borrowed_value(&mut buf).unwrap();
            for g in &mut groups {
                assert!(g.append(&v).iter().all(Result::is_ok));
            }
        }
        for g in &mut groups {
            for k in 0..g.views().len() {
                g.finish_batch(k).unwrap();
            }
        }
    }

    #[test]
    fn errors_stay_with_their_view() {
        let ok = view(
            r#"{"resource":"Patient","name":"a","select":[{"column":[{"name":"id","path":"id"}]}]}"#,
        );
        let bad = view(
            r#"{"resource":"Patient","name":"b","select":[{"column":[{"name":"n","path":"name.family"}]}]}"#,
        );
        let mut g = ViewGroup::new(vec![ok, bad]).unwrap();
        let mut buf =
            br#"{"resourceType":"Patient","id":"p","name":[{"family":"A"},{"family":"B"}]}"#
                .to_vec();
        let v = simd_json::to_borrowed_value(&mut buf).unwrap();
        let r = g.append(&v);
        assert_eq!(*r[0].as_ref().unwrap(), 1);
        assert!(matches!(r[1], Err(EvalError::NotSingleton { .. })));
        assert_eq!((g.len(0), g.len(1)), (1, 0));
        let mut buf = br#"{"resourceType":"Observation","id":"o"}"#.to_vec();
        let v = simd_json::to_borrowed_value(&mut buf).unwrap();
        assert!(g.append(&v).iter().all(|r| matches!(r, Ok(0))));
    }

    #[test]
    fn group_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<ViewGroup>();
    }

    #[test]
    fn mixed_types_are_rejected() {
        let p = view(r#"{"resource":"Patient","select":[{"column":[{"name":"id","path":"id"}]}]}"#);
        let o =
            view(r#"{"resource":"Observation","select":[{"column":[{"name":"id","path":"id"}]}]}"#);
        assert!(ViewGroup::new(vec![p.clone(), o.clone()]).is_err());
        assert!(ViewGroup::new(Vec::new()).is_err());
        let groups = ViewGroup::group_all([p.clone(), o, p]);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].views().len(), 2);
        assert_eq!(groups[1].resource(), "Observation");
    }
}
