-- Shared types and macros for the DuckDB side of the pipeline benchmark; run.sh executes this
-- before every view file. Each view file is one `COPY (SELECT ...) TO __OUT__` over
-- `read_ndjson(__FILES__, columns = {...})`, where run.sh substitutes __FILES__ (the input
-- files holding that resource type) and __OUT__ (the Parquet file to write).
--
-- Only the fields a view needs are declared (typed STRUCTs: DuckDB's fastest JSON path);
-- other keys are skipped by the reader.

CREATE TYPE coding_t AS STRUCT(system VARCHAR, version VARCHAR, code VARCHAR, display VARCHAR, userSelected BOOLEAN);
CREATE TYPE cc_t AS STRUCT(coding coding_t[], text VARCHAR);
CREATE TYPE ref_t AS STRUCT(reference VARCHAR);
CREATE TYPE period_t AS STRUCT("start" VARCHAR, "end" VARCHAR);
CREATE TYPE meta_t AS STRUCT(lastUpdated VARCHAR);
CREATE TYPE quantity_t AS STRUCT(value VARCHAR, comparator VARCHAR, unit VARCHAR, system VARCHAR, code VARCHAR);
CREATE TYPE contact_t AS STRUCT(system VARCHAR, value VARCHAR, use VARCHAR, rank BIGINT);
CREATE TYPE identifier_t AS STRUCT(use VARCHAR, type cc_t, system VARCHAR, value VARCHAR, period period_t);
CREATE TYPE humanname_t AS STRUCT(use VARCHAR, text VARCHAR, family VARCHAR, given VARCHAR[], prefix VARCHAR[], suffix VARCHAR[], period period_t);
CREATE TYPE address_t AS STRUCT(use VARCHAR, type VARCHAR, text VARCHAR, line VARCHAR[], city VARCHAR, district VARCHAR, state VARCHAR, postalCode VARCHAR, country VARCHAR, period period_t);

-- getReferenceKey(T): the last path segment of Reference.reference (after dropping any
-- `/_history/...`), kept only when the segment before it is T (normalize/src/fhirpath).
CREATE MACRO ref_strip(r) AS CASE WHEN strpos(r, '/_history') > 0 THEN left(r, strpos(r, '/_history') - 1) ELSE r END;
CREATE MACRO ref_key(r, t) AS CASE WHEN string_split(ref_strip(r), '/')[-2] = t THEN string_split(ref_strip(r), '/')[-1] END;
-- first(): the first non-empty item of a collection.
CREATE MACRO first_nn(l) AS list_filter(l, lambda x: x IS NOT NULL)[1];
-- FHIR instant → UTC timestamp.
CREATE MACRO instant(s) AS CAST(s AS TIMESTAMPTZ);
-- `forEach: <CodeableConcept path>` rows of a *_coding view: the non-empty items of `l`
-- tagged with the element's FHIRPath and %rowIndex.
CREATE MACRO cc_rows(name, l) AS list_transform(list_filter(coalesce(l, []), lambda x: x IS NOT NULL),
  lambda x, i: {'element': name, 'element_index': i - 1, 'cc': x});
-- `forEachOrNull: coding`: one row per Coding, or one null row when there is none (whose
-- %rowIndex is 0, as the SQL-on-FHIR suite's row_index.json expects).
CREATE MACRO codings_or_null(l) AS CASE WHEN len(l) > 0
  THEN list_transform(l, lambda c, i: {'i': i - 1, 'c': c})
  ELSE [{'i': 0, 'c': NULL::coding_t}] END;
