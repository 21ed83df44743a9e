-- medication_request_coding: one row per Coding of MedicationRequest's medication[x] (CodeableConcept), reasonCode and category
-- (schemas/views/medication_request_coding.json). A CodeableConcept without codings gives one row with null coding
-- columns (forEachOrNull); element_index is the CodeableConcept's %rowIndex, coding_index
-- the Coding's.
COPY (
  SELECT id, 'MedicationRequest' AS resource_type, e.element, e.element_index, e.cc.text AS text,
         c.i AS coding_index, c.c.system AS system, c.c.version AS version, c.c.code AS code,
         c.c.display AS display, c.c.userSelected AS user_selected
  FROM (
    SELECT id, e, unnest(codings_or_null(e.cc.coding)) AS c
    FROM (
      SELECT id, unnest(list_concat(
        cc_rows('medication.ofType(CodeableConcept)', [medicationCodeableConcept]),
        cc_rows('reasonCode', reasonCode),
        cc_rows('category', category)
      )) AS e
      FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
        columns = {id: 'VARCHAR', medicationCodeableConcept: 'cc_t', reasonCode: 'cc_t[]', category: 'cc_t[]'})
    )
  )
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
