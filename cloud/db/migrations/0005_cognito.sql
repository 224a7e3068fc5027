-- AWS Cognito users map to local rows by the pool's immutable `sub` (linked once by verified
-- email, or created on first use), so farm roles and room grants apply to them as to anyone.
-- Numbered 0005: 0004 is reserved for the edge sync tables.
ALTER TABLE users ADD COLUMN cognito_sub text UNIQUE;
