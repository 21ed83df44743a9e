-- organization: one row per Organization (schemas/views/organization.json).
COPY (
  SELECT id,
         instant(meta.lastUpdated) AS last_updated,
         active,
         name,
         type[1].coding[1].code AS type_code,
         first_nn(list_transform(list_filter(identifier, lambda i: i.system = 'http://hl7.org/fhir/sid/us-npi'), lambda i: i.value)) AS npi,
         first_nn(list_transform(list_filter(telecom, lambda t: t.system = 'phone'), lambda t: t.value)) AS phone,
         array_to_string(address[1].line, ', ') AS address_line,
         address[1].city AS address_city,
         address[1].state AS address_state,
         address[1].postalCode AS address_postal_code,
         ref_key(partOf.reference, 'Organization') AS part_of_id
  FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
    columns = {id: 'VARCHAR', meta: 'meta_t', active: 'BOOLEAN', name: 'VARCHAR', type: 'cc_t[]',
      identifier: 'identifier_t[]', telecom: 'contact_t[]', address: 'address_t[]', partOf: 'ref_t'})
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
