-- observation_component: one row per Observation.component (forEach: component), with the
-- parent's keys (schemas/views/observation_component.json).
COPY (
  SELECT id, patient_id, encounter_id, effective_date_time,
         component_index,
         code.coding[1].system AS code_system,
         code.coding[1].code AS code_code,
         code.coding[1].display AS code_display,
         code.text AS code_text,
         valueQuantity.value AS value_quantity_value,
         valueQuantity.comparator AS value_quantity_comparator,
         valueQuantity.unit AS value_quantity_unit,
         valueQuantity.system AS value_quantity_system,
         valueQuantity.code AS value_quantity_code,
         valueCodeableConcept.coding[1].system AS value_codeable_concept_system,
         valueCodeableConcept.coding[1].code AS value_codeable_concept_code,
         valueCodeableConcept.coding[1].display AS value_codeable_concept_display,
         valueCodeableConcept.text AS value_codeable_concept_text,
         valueString AS value_string,
         valueBoolean AS value_boolean,
         valueInteger AS value_integer,
         valueDateTime AS value_date_time,
         dataAbsentReason.coding[1].code AS data_absent_reason_code
  FROM (
    SELECT id, patient_id, encounter_id, effective_date_time, component_index, unnest(c)
    FROM (
    SELECT id,
           ref_key(subject.reference, 'Patient') AS patient_id,
           ref_key(encounter.reference, 'Encounter') AS encounter_id,
           effectiveDateTime AS effective_date_time,
           generate_subscripts(component, 1) - 1 AS component_index,
           unnest(component) AS c
    FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
      columns = {id: 'VARCHAR', subject: 'ref_t', encounter: 'ref_t', effectiveDateTime: 'VARCHAR',
        component: 'STRUCT(code cc_t, valueQuantity quantity_t, valueCodeableConcept cc_t,
          valueString VARCHAR, valueBoolean BOOLEAN, valueInteger BIGINT, valueDateTime VARCHAR,
          dataAbsentReason cc_t)[]'})
    )
  )
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
