-- Where each side of a usage row's token counts came from: the provider's usage report,
-- the gateway's exact count, an estimate, or nothing known.

ALTER TABLE usage_records
    ADD COLUMN input_source text NOT NULL DEFAULT 'provider'
        CHECK (input_source IN ('provider', 'counted', 'estimated', 'none')),
    ADD COLUMN output_source text NOT NULL DEFAULT 'provider'
        CHECK (output_source IN ('provider', 'counted', 'estimated', 'none'));

UPDATE usage_records SET input_source = 'none', output_source = 'none'
    WHERE usage_source = 'none';
