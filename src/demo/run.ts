export async function runDemo(): Promise<void> { throw new Error('demo: not yet'); }
