-- patient: one row per Patient (schemas/views/patient.json), with the US Core race,
-- ethnicity and birth-sex extensions and the official (else first) name.
COPY (
  SELECT id,
         instant(meta.lastUpdated) AS last_updated,
         active,
         gender,
         birthDate AS birth_date,
         first_nn(list_transform(list_filter(_birthDate.extension,
           lambda e: e.url = 'http://hl7.org/fhir/StructureDefinition/patient-birthTime'),
           lambda e: e.valueDateTime)) AS birth_time,
         deceasedBoolean AS deceased_boolean,
         deceasedDateTime AS deceased_date_time,
         coalesce(list_filter(name, lambda n: n.use = 'official')[1], name[1]).family AS family_name,
         array_to_string(coalesce(list_filter(name, lambda n: n.use = 'official')[1], name[1]).given, ' ') AS given_names,
         first_nn(flatten(list_transform(
           list_filter(extension, lambda e: e.url = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-race'),
           lambda e: list_transform(list_filter(e.extension, lambda x: x.url = 'ombCategory'), lambda x: x.valueCoding.code)))) AS race_omb_code,
         first_nn(flatten(list_transform(
           list_filter(extension, lambda e: e.url = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-race'),
           lambda e: list_transform(list_filter(e.extension, lambda x: x.url = 'text'), lambda x: x.valueString)))) AS race_text,
         first_nn(flatten(list_transform(
           list_filter(extension, lambda e: e.url = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity'),
           lambda e: list_transform(list_filter(e.extension, lambda x: x.url = 'ombCategory'), lambda x: x.valueCoding.code)))) AS ethnicity_omb_code,
         first_nn(flatten(list_transform(
           list_filter(extension, lambda e: e.url = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity'),
           lambda e: list_transform(list_filter(e.extension, lambda x: x.url = 'text'), lambda x: x.valueString)))) AS ethnicity_text,
         first_nn(list_transform(
           list_filter(extension, lambda e: e.url = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex'),
           lambda e: e.valueCode)) AS birth_sex,
         maritalStatus.coding[1].code AS marital_status_code,
         multipleBirthBoolean AS multiple_birth_boolean,
         multipleBirthInteger AS multiple_birth_integer,
         coalesce(list_filter(communication, lambda c: c.preferred)[1], communication[1]).language.coding[1].code AS language_code,
         first_nn(list_transform(
           list_filter(identifier, lambda i: len(list_filter(i.type.coding, lambda c: c.code = 'MR')) > 0),
           lambda i: i.value)) AS mrn,
         ref_key(managingOrganization.reference, 'Organization') AS managing_organization_id,
         first_nn(list_transform(generalPractitioner, lambda g: ref_key(g.reference, 'Practitioner'))) AS general_practitioner_id
  FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
    columns = {id: 'VARCHAR', meta: 'meta_t', active: 'BOOLEAN', gender: 'VARCHAR',
      birthDate: 'VARCHAR', _birthDate: 'STRUCT(extension STRUCT(url VARCHAR, valueDateTime VARCHAR)[])',
      deceasedBoolean: 'BOOLEAN', deceasedDateTime: 'VARCHAR', name: 'humanname_t[]',
      extension: 'STRUCT(url VARCHAR, valueCode VARCHAR, extension STRUCT(url VARCHAR, valueCoding coding_t, valueString VARCHAR)[])[]',
      maritalStatus: 'cc_t', multipleBirthBoolean: 'BOOLEAN', multipleBirthInteger: 'BIGINT',
      communication: 'STRUCT(language cc_t, preferred BOOLEAN)[]', identifier: 'identifier_t[]',
      managingOrganization: 'ref_t', generalPractitioner: 'ref_t[]'})
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
