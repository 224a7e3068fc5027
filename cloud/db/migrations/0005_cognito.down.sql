ALTER TABLE users DROP COLUMN cognito_sub;
