-- location: one row per Location (schemas/views/location.json). Location.address is a
-- single Address; address.line.join(', ') joins its lines.
COPY (
  SELECT id,
         instant(meta.lastUpdated) AS last_updated,
         status,
         name,
         description,
         mode,
         type[1].coding[1].code AS type_code,
         first_nn(list_transform(list_filter(telecom, lambda t: t.system = 'phone'), lambda t: t.value)) AS phone,
         array_to_string(address.line, ', ') AS address_line,
         address.city AS address_city,
         address.state AS address_state,
         address.postalCode AS address_postal_code,
         position.latitude AS latitude,
         position.longitude AS longitude,
         ref_key(managingOrganization.reference, 'Organization') AS managing_organization_id
  FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
    columns = {id: 'VARCHAR', meta: 'meta_t', status: 'VARCHAR', name: 'VARCHAR',
      description: 'VARCHAR', mode: 'VARCHAR', type: 'cc_t[]', telecom: 'contact_t[]',
      address: 'address_t', position: 'STRUCT(latitude VARCHAR, longitude VARCHAR)',
      managingOrganization: 'ref_t'})
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
