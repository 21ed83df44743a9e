-- practitioner: one row per Practitioner (schemas/views/practitioner.json).
COPY (
  SELECT id,
         instant(meta.lastUpdated) AS last_updated,
         active,
         first_nn(list_transform(list_filter(identifier, lambda i: i.system = 'http://hl7.org/fhir/sid/us-npi'), lambda i: i.value)) AS npi,
         name[1].family AS family_name,
         array_to_string(name[1].given, ' ') AS given_names,
         array_to_string(name[1].prefix, ' ') AS prefix,
         gender,
         birthDate AS birth_date,
         first_nn(list_transform(list_filter(telecom, lambda t: t.system = 'phone'), lambda t: t.value)) AS phone,
         first_nn(list_transform(list_filter(telecom, lambda t: t.system = 'email'), lambda t: t.value)) AS email,
         address[1].city AS address_city,
         address[1].state AS address_state,
         address[1].postalCode AS address_postal_code
  FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
    columns = {id: 'VARCHAR', meta: 'meta_t', active: 'BOOLEAN', identifier: 'identifier_t[]',
      name: 'humanname_t[]', gender: 'VARCHAR', birthDate: 'VARCHAR', telecom: 'contact_t[]',
      address: 'address_t[]'})
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
